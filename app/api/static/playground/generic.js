// Any other model: a form made from its Open Inference Protocol metadata (GET /v2/models/{name}:
// each input's name, datatype and shape), run through /v2's infer, and every output as a table.

import { getJson, modelPath, postJson } from "./api.js";
import { el, errorLine } from "./dom.js";

const MAX_FIELDS = 16; // a vector up to this long gets a box per number; longer ones, CSV
const MAX_CELLS = 400; // of an output shown

const fixed = (shape) => shape.slice(1); // the shape of one item (the first dimension is the batch)

// Numbers from CSV: one row per line, values separated by commas or spaces.
function parseRows(text, inputName) {
  const lines = text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  return lines.map((line, row) =>
    line
      .split(/[\s,;]+/)
      .filter(Boolean)
      .map((value, column) => {
        const number = Number(value);
        if (Number.isNaN(number)) {
          throw new Error(
            `${inputName}: row ${row + 1}, value ${column + 1}: '${value}' is not a number`,
          );
        }
        return number;
      }),
  );
}

// One input's field and how to read it into a /v2 tensor of one item.
function inputField(spec) {
  const shape = fixed(spec.shape);
  const tensor = (itemShape, data) => ({
    name: spec.name,
    datatype: spec.datatype,
    shape: [1, ...itemShape],
    data,
  });
  const asType = (values) => (spec.datatype === "BOOL" ? values.map((v) => v !== 0) : values);
  const label = el(
    "span",
    { class: "input-name" },
    `${spec.name} (${spec.datatype}, [${spec.shape.join(", ")}])`,
  );
  if (spec.datatype === "BYTES") {
    const box = el("input", { type: "text", "aria-label": spec.name });
    return {
      view: el("label", {}, label, box),
      read: () =>
        tensor(
          shape.map(() => 1),
          [box.value],
        ),
    };
  }
  // A scalar per item, or a short vector: a box per number.
  const count = shape.length === 0 ? 1 : shape.length === 1 && shape[0] > 0 ? shape[0] : 0;
  if (count > 0 && count <= MAX_FIELDS) {
    const boxes = Array.from({ length: count }, (_, i) =>
      el("input", { type: "number", step: "any", value: 0, "aria-label": `${spec.name}[${i}]` }),
    );
    const read = () => tensor(shape, asType(boxes.map((box) => Number(box.value))));
    return { view: el("div", {}, label, el("div", { class: "numbers" }, ...boxes)), read };
  }
  // Longer vectors and sequences (a row per step): CSV, prefilled with one row of zeros.
  const width = shape.at(-1) > 0 ? shape.at(-1) : 1;
  const area = el("textarea", {
    rows: 4,
    "aria-label": spec.name,
    placeholder: "CSV: one row per line",
  });
  area.value = Array(width).fill(0).join(", ");
  const read = () => {
    const rows = parseRows(area.value, spec.name);
    const flat = rows.flat();
    const itemShape = shape.length >= 2 ? [rows.length, rows[0]?.length ?? 0] : [flat.length];
    return tensor(itemShape, asType(flat));
  };
  return { view: el("label", {}, label, area), read };
}

// An output as a table: one row per step of its last-but-one dimension, a column per value.
function outputTable(output, labels) {
  const item = fixed(output.shape);
  const columns = item.length ? item.at(-1) : 1;
  const data = output.data.slice(0, MAX_CELLS);
  // Columns are named by the labels when there is one per column, else numbered; a scalar has none.
  let heads =
    labels.length === columns ? labels : Array.from({ length: columns }, (_, i) => String(i));
  if (!item.length) heads = [];
  const cell = (value) =>
    el("td", {}, typeof value === "number" ? String(Number(value.toPrecision(6))) : String(value));
  const rows = [];
  for (let start = 0; start < data.length; start += columns) {
    rows.push(el("tr", {}, ...data.slice(start, start + columns).map(cell)));
  }
  const more =
    output.data.length > MAX_CELLS ? ` (the first ${MAX_CELLS} of ${output.data.length})` : "";
  return el(
    "table",
    { class: "output", "data-output": output.name },
    el("caption", {}, `${output.name} (${output.datatype}, [${output.shape.join(", ")}])${more}`),
    el(
      "thead",
      {},
      ...(heads.length ? [el("tr", {}, ...heads.map((head) => el("th", {}, head)))] : []),
    ),
    el("tbody", {}, ...rows),
  );
}

export async function genericPanel(body, meta) {
  const protocol = await getJson(modelPath("v2", meta.name));
  const fields = protocol.inputs.map(inputField);
  const run = el("button", { type: "submit" }, "Run");
  const form = el("form", { class: "generic" }, ...fields.map((field) => field.view), run);
  const result = el("div", { class: "result" });
  body.append(form, result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const inputs = fields.map((field) => field.read());
      const answer = await postJson(modelPath("v2", meta.name, "/infer"), { inputs });
      result.replaceChildren(
        ...answer.outputs.map((output) => outputTable(output, meta.labels ?? [])),
      );
    } catch (error) {
      result.replaceChildren(errorLine(error));
    }
  });
}
