// Text classifiers: a text box, and the top labels with their probabilities as the user types.

import { modelPath, postJson } from "./api.js";
import { bars, el, errorLine, latestWins } from "./dom.js";

const TOP_K = 5;

export function isTextClassifier(meta) {
  return meta.task === "classify" && meta.input?.kind === "text";
}

export function textClassifierPanel(body, meta) {
  const input = el("input", {
    type: "text",
    maxlength: meta.input.max_length,
    placeholder: "Type here",
    "aria-label": `text for ${meta.name}`,
  });
  // data-for says which text the chart shows: the answer to the newest request.
  const chart = el("div", { class: "chart", "data-for": "" });
  body.append(input, chart);

  const classify = latestWins(async (text) => {
    if (!text) {
      chart.replaceChildren();
    } else {
      try {
        const answer = await postJson(modelPath("v1", meta.name, "/predict"), {
          inputs: [text],
          top_k: Math.min(TOP_K, meta.labels.length),
        });
        chart.replaceChildren(bars(answer.predictions[0].top_k));
      } catch (error) {
        chart.replaceChildren(errorLine(error));
      }
    }
    chart.dataset.for = text;
  });
  input.addEventListener("input", () => classify(input.value));
}
