// The playground page: a panel per served model, chosen by its metadata (GET /v1/models/{name}),
// so a model added to the repository gets its panel with no change here.

import { ApiError, getJson, modelPath, onUnauthorized, setKey } from "./api.js";
import { imageClassifierPanel, isImageClassifier } from "./digits.js";
import { el, errorLine } from "./dom.js";
import { genericPanel } from "./generic.js";
import { isLanguageModel, languageModelPanel } from "./lm.js";
import { isTextClassifier, textClassifierPanel } from "./text.js";

// [fits(metadata), build(panel body, metadata)]; the first that fits wins, else the generic form.
const PANELS = [
  [isImageClassifier, imageClassifierPanel],
  [isTextClassifier, textClassifierPanel],
  [isLanguageModel, languageModelPanel],
];

const panels = document.getElementById("panels");
const status = document.getElementById("status");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key");
const keyMessage = document.getElementById("key-message");

async function panelFor(name) {
  const body = el("div", { class: "body" });
  const section = el("section", { class: "panel", "data-model": name }, el("h2", {}, name), body);
  try {
    const meta = await getJson(modelPath("v1", name));
    section.dataset.task = meta.task;
    if (meta.description) body.before(el("p", { class: "description" }, meta.description));
    if (meta.state !== "ready")
      body.append(el("p", { class: "error" }, `${meta.state}: ${meta.reason ?? ""}`));
    const build = PANELS.find(([fits]) => fits(meta))?.[1] ?? genericPanel;
    section.dataset.panel = build.name;
    await build(body, meta);
  } catch (error) {
    body.append(errorLine(error));
  }
  return section;
}

async function load() {
  status.replaceChildren("Loading the models...");
  try {
    const listing = await getJson("v1/models");
    keyForm.hidden = true;
    panels.replaceChildren(
      ...(await Promise.all(listing.models.map((model) => panelFor(model.name)))),
    );
    const count = listing.models.length;
    status.replaceChildren(count ? `${count} models served.` : "This server serves no models.");
  } catch (error) {
    status.replaceChildren(
      error instanceof ApiError && error.status === 401 ? "" : errorLine(error),
    );
  }
}

onUnauthorized((error) => {
  keyForm.hidden = false;
  keyMessage.replaceChildren(error.message);
  keyInput.focus();
});
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setKey(keyInput.value.trim());
  load();
});
load();
