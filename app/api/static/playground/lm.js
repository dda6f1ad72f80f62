// Language models: each character coloured by its log-probability under the model, its
// alternatives on hover, the string's totals, and a sampled continuation streamed in.

import { events, modelPath, postJson } from "./api.js";
import { el, errorLine, latestWins, percent } from "./dom.js";

const END = "</s>";
const ALTERNATIVES = 5; // the most /v1/completions gives
// Colour bands by probability: [lowest probability, class, legend].
const BANDS = [
  [0.3, "p0", "30% or more"],
  [0.1, "p1", "10-30%"],
  [0.03, "p2", "3-10%"],
  [0, "p3", "under 3%"],
];
const CONTINUATION = 16; // characters asked for at most

export function isLanguageModel(meta) {
  return meta.task === "score" && meta.input?.kind === "text";
}

function band(logProb) {
  return BANDS.find(([lowest]) => Math.exp(logProb) >= lowest)[1];
}

// One token as the page shows it; `alternatives` maps each of the model's top tokens there to
// its log-prob (absent when unknown).
function tokenView(token, logProb, alternatives, generated) {
  const classes = ["token", band(logProb), token === END ? "end" : "", generated ? "new" : ""];
  const view = el(
    "span",
    { class: classes.join(" ").trim(), tabindex: 0 },
    token === END ? "⏎" : token,
  );
  view.dataset.token = token;
  view.dataset.logprob = String(logProb);
  if (alternatives) view.dataset.alternatives = JSON.stringify(alternatives);
  return view;
}

function tooltipFor(view) {
  const logProb = Number(view.dataset.logprob);
  const token = view.dataset.token === END ? "the end (</s>)" : `'${view.dataset.token}'`;
  const lines = [
    el(
      "div",
      { class: "logprob" },
      `${token}: log p = ${logProb.toFixed(5)} (p = ${percent(Math.exp(logProb))})`,
    ),
  ];
  if (view.dataset.alternatives) {
    const top = Object.entries(JSON.parse(view.dataset.alternatives));
    const rows = top.map(([alt, lp]) =>
      el(
        "tr",
        {},
        el("td", {}, alt === END ? "⏎ end" : alt),
        el("td", {}, lp.toFixed(3)),
        el("td", {}, percent(Math.exp(lp))),
      ),
    );
    lines.push(
      el("div", {}, "the model's top choices here:"),
      el("table", { class: "alternatives" }, ...rows),
    );
  }
  return lines;
}

function legend() {
  return el(
    "p",
    { class: "legend" },
    "probability of each character: ",
    ...BANDS.map(([, name, words]) => el("span", { class: `token ${name}` }, words)),
  );
}

export function languageModelPanel(body, meta) {
  const input = el("input", {
    type: "text",
    maxlength: meta.input.max_length,
    placeholder: "Type here",
    "aria-label": `text for ${meta.name}`,
  });
  const tokens = el("p", { class: "tokens", "data-for": "" });
  const totals = el("p", { class: "totals" });
  const tooltip = el("div", { class: "tooltip", role: "tooltip", hidden: "" });
  const temperature = el("input", { type: "number", value: 1, min: 0, max: 2, step: 0.1 });
  const seed = el("input", { type: "number", min: 0, step: 1, placeholder: "random" });
  const button = el("button", { type: "button", class: "continue" }, "Continue");
  const state = el("p", { class: "stream-state", role: "status" });
  body.append(
    input,
    el("div", { class: "scored" }, tokens, tooltip),
    totals,
    legend(),
    el(
      "div",
      { class: "row" },
      el("label", {}, "temperature ", temperature),
      el("label", {}, "seed ", seed),
      button,
    ),
    state,
  );

  const show = (view) => {
    tooltip.replaceChildren(...tooltipFor(view));
    tooltip.hidden = false;
    tooltip.style.left = `${view.offsetLeft}px`;
    tooltip.style.top = `${view.offsetTop + view.offsetHeight + 4}px`;
  };
  tokens.addEventListener(
    "pointerover",
    (event) => event.target.dataset?.logprob && show(event.target),
  );
  tokens.addEventListener("focusin", (event) => show(event.target));
  tokens.addEventListener("pointerleave", () => (tooltip.hidden = true));
  tokens.addEventListener("focusout", () => (tooltip.hidden = true));

  // Log-probs from /score (per token); the alternatives from /v1/completions, which gives the
  // top tokens at every position of an echoed prompt, the end included with one greedy token.
  async function score(text, generatedFrom = Infinity) {
    const [scored, echoed] = await Promise.allSettled([
      postJson(modelPath("v1", meta.name, "/score"), { inputs: [text], per_token: true }),
      postJson("v1/completions", {
        model: meta.name,
        prompt: text,
        echo: true,
        logprobs: ALTERNATIVES,
        max_tokens: 1,
        temperature: 0,
      }),
    ]);
    if (scored.status === "rejected") throw scored.reason;
    const result = scored.value.scores[0];
    const top = echoed.status === "fulfilled" ? echoed.value.choices[0].logprobs.top_logprobs : [];
    tokens.replaceChildren(
      ...result.tokens.map((t, i) => tokenView(t.token, t.log_prob, top[i], i >= generatedFrom)),
    );
    const { log_prob: logProb, num_tokens: count, perplexity } = result;
    const words = `log P = ${logProb.toFixed(4)} · ${count} tokens · perplexity ${perplexity.toFixed(3)}`;
    totals.replaceChildren(words);
  }

  async function rescoreNow(text, generatedFrom) {
    tooltip.hidden = true;
    try {
      if (text) {
        await score(text, generatedFrom);
      } else {
        tokens.replaceChildren();
        totals.replaceChildren();
      }
    } catch (error) {
      tokens.replaceChildren(errorLine(error));
      totals.replaceChildren();
    }
    tokens.dataset.for = text;
  }
  const rescore = latestWins((text) => rescoreNow(text));
  input.addEventListener("input", () => rescore(input.value));

  let streaming = null; // the AbortController of the continuation under way
  async function continueText() {
    const prompt = input.value;
    const room = (meta.input.max_length ?? CONTINUATION) - prompt.length;
    const request = {
      model: meta.name,
      prompt,
      max_tokens: Math.max(1, Math.min(CONTINUATION, room)),
      temperature: Number(temperature.value),
      logprobs: ALTERNATIVES,
      stream: true,
    };
    if (seed.value !== "") request.seed = Number(seed.value);
    streaming = new AbortController();
    button.textContent = "Stop";
    state.replaceChildren("streaming...");
    state.dataset.state = "streaming";
    tokens.querySelector(".end")?.remove();
    let text = prompt;
    let finish = "stopped";
    try {
      for await (const chunk of events("v1/completions", request, streaming.signal)) {
        const choice = chunk.choices[0];
        const { tokens: got, token_logprobs: logProbs, top_logprobs: top } = choice.logprobs;
        got.forEach((token, i) => tokens.append(tokenView(token, logProbs[i], top?.[i], true)));
        text += choice.text;
        finish = choice.finish_reason ?? finish;
      }
      const why =
        { stop: "the model (end of sequence)", length: "the length limit" }[finish] ?? finish;
      const count = text.length - prompt.length;
      state.replaceChildren(
        `Done: ${count} new character${count === 1 ? "" : "s"}, stopped by ${why}.`,
      );
    } catch (error) {
      state.replaceChildren(error.name === "AbortError" ? "Stopped." : errorLine(error));
    }
    button.textContent = "Continue";
    streaming = null;
    // The whole string scored again: its totals, and the alternatives at each new character.
    input.value = text;
    state.dataset.state = "scoring";
    await rescoreNow(text, prompt.length);
    state.dataset.state = "done";
  }
  button.addEventListener("click", () => (streaming ? streaming.abort() : continueText()));
}
