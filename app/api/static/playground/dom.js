// Small DOM helpers the panels share: elements, bar charts, errors, and "latest wins" requests.

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function percent(probability) {
  return `${(100 * probability).toFixed(1)}%`;
}

// A bar chart: one row per {label, probability}, in the order given; the most likely is marked.
export function bars(rows) {
  const top = Math.max(...rows.map((row) => row.probability));
  return el(
    "ol",
    { class: "bars" },
    ...rows.map((row) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${Math.max(0.5, 100 * row.probability)}%`;
      return el(
        "li",
        { class: row.probability === top ? "top" : null, "data-label": row.label },
        el("span", { class: "label" }, row.label),
        el("span", { class: "bar" }, fill),
        el("span", { class: "value" }, percent(row.probability)),
      );
    }),
  );
}

// An API error as the API worded it.
export function errorLine(error) {
  return el("p", { class: "error", role: "alert" }, error.message);
}

// Runs `task(value)` for the latest value given: debounced by `delayMs`, one call in flight at a
// time; values given while a call runs are not queued, only the newest runs next.
export function latestWins(task, delayMs = 120) {
  let timer = 0;
  let running = false;
  let pending = false;
  let latest;
  async function run() {
    if (running) return; // the running loop picks up the latest value
    running = true;
    try {
      while (pending) {
        pending = false;
        await task(latest);
      }
    } finally {
      running = false;
    }
  }
  return (value) => {
    latest = value;
    pending = true;
    clearTimeout(timer);
    timer = setTimeout(run, delayMs);
  };
}
