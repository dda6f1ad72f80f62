// Image classifiers (an input of 784 values or 28x28): a pad to draw on, the preprocessing MNIST
// models expect, a preview of what is sent, and every label's probability as a bar chart.

import { modelPath, postJson } from "./api.js";
import { bars, el, errorLine, percent } from "./dom.js";

const SIDE = 28; // the model's image
const BOX = 20; // MNIST digits fit a 20x20 box inside it
const PAD = 280; // the drawing pad, in canvas pixels
const PEN = 20;

export function isImageClassifier(meta) {
  const input = meta.input ?? {};
  const shapes = [input.shape, ...(input.also_shapes ?? [])].map((shape) => String(shape));
  return meta.task === "classify" && (shapes.includes("784") || shapes.includes("28,28"));
}

// The bounding box of the pixels with ink; null when there is none.
function strokeBox(ink, width, height) {
  let [left, top, right, bottom] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] === 0) continue;
      left = Math.min(left, x);
      right = Math.max(right, x);
      top = Math.min(top, y);
      bottom = Math.max(bottom, y);
    }
  }
  return right < 0 ? null : { left, top, width: right - left + 1, height: bottom - top + 1 };
}

// Ink (0..1, row-major, width x height) as MNIST prepared its digits: cropped to the stroke,
// scaled to fit 20x20 with its aspect kept (each pixel the mean of the ink it covers), placed in
// 28x28 with its centre of mass at the centre, brightest pixel 1. Null when nothing is drawn.
export function mnistPixels(ink, width, height) {
  const box = strokeBox(ink, width, height);
  if (box === null) return null;
  const scale = BOX / Math.max(box.width, box.height);
  const w = Math.max(1, Math.round(box.width * scale));
  const h = Math.max(1, Math.round(box.height * scale));
  const sum = new Float32Array(w * h);
  const count = new Float32Array(w * h);
  for (let y = 0; y < box.height; y++) {
    for (let x = 0; x < box.width; x++) {
      const cell = Math.floor((y * h) / box.height) * w + Math.floor((x * w) / box.width);
      sum[cell] += ink[(box.top + y) * width + box.left + x];
      count[cell] += 1;
    }
  }
  let [mass, massX, massY] = [0, 0, 0];
  for (let i = 0; i < w * h; i++) {
    sum[i] /= count[i];
    mass += sum[i];
    massX += sum[i] * ((i % w) + 0.5);
    massY += sum[i] * (Math.floor(i / w) + 0.5);
  }
  const dx = Math.round(SIDE / 2 - massX / mass);
  const dy = Math.round(SIDE / 2 - massY / mass);
  const pixels = new Float32Array(SIDE * SIDE);
  for (let i = 0; i < w * h; i++) {
    const [x, y] = [(i % w) + dx, Math.floor(i / w) + dy];
    if (x >= 0 && x < SIDE && y >= 0 && y < SIDE) pixels[y * SIDE + x] = sum[i];
  }
  const brightest = Math.max(...pixels);
  return pixels.map((value) => Math.min(1, value / brightest));
}

function drawStrokes(context, strokes) {
  context.clearRect(0, 0, PAD, PAD);
  Object.assign(context, { lineWidth: PEN, lineCap: "round", lineJoin: "round" });
  context.strokeStyle = "#111";
  for (const points of strokes) {
    context.beginPath();
    context.moveTo(...points[0]);
    // A dot is a zero-length line, which a round cap draws as a disc.
    for (const point of points.length > 1 ? points.slice(1) : points) context.lineTo(...point);
    context.stroke();
  }
}

function showPreview(preview, pixels) {
  const image = new ImageData(SIDE, SIDE);
  pixels?.forEach((value, i) => {
    image.data.fill(Math.round(255 * value), 4 * i, 4 * i + 3);
    image.data[4 * i + 3] = 255;
  });
  preview.getContext("2d").putImageData(image, 0, 0);
}

export function imageClassifierPanel(body, meta) {
  const pad = el("canvas", { class: "pad", width: PAD, height: PAD, "aria-label": "drawing pad" });
  const preview = el("canvas", { class: "preview", width: SIDE, height: SIDE });
  const prediction = el("p", { class: "prediction" }, "Draw a digit.");
  const undo = el("button", { type: "button" }, "Undo");
  const clear = el("button", { type: "button" }, "Clear");
  const chart = el("div", { class: "chart" });
  const aside = el(
    "div",
    { class: "aside" },
    el("figure", {}, preview, el("figcaption", {}, `sent: ${SIDE}x${SIDE}, 0..1`)),
    prediction,
    el("div", { class: "row" }, undo, clear),
  );
  body.append(el("div", { class: "drawing" }, pad, aside), chart);

  const context = pad.getContext("2d", { willReadFrequently: true });
  const strokes = [];
  let asked = 0; // the newest classification asked for; older answers are dropped
  const where = (event) => {
    const rect = pad.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) * PAD) / rect.width,
      ((event.clientY - rect.top) * PAD) / rect.height,
    ];
  };

  async function classify() {
    drawStrokes(context, strokes);
    const alpha = context.getImageData(0, 0, PAD, PAD).data.filter((_, i) => i % 4 === 3);
    const pixels = mnistPixels(
      Float32Array.from(alpha, (a) => a / 255),
      PAD,
      PAD,
    );
    showPreview(preview, pixels);
    const ask = ++asked;
    // data-strokes says which drawing the answer shown is for.
    const shown = () => (prediction.dataset.strokes = String(strokes.length));
    if (pixels === null) {
      prediction.replaceChildren("Draw a digit.");
      chart.replaceChildren();
      shown();
      return;
    }
    const item = String(meta.input.shape) === "28,28" ? rows(pixels) : Array.from(pixels);
    try {
      const answer = await postJson(modelPath("v1", meta.name, "/predict"), {
        inputs: [item],
        top_k: meta.labels.length,
      });
      if (ask !== asked) return;
      const best = answer.predictions[0];
      const byLabel = new Map(best.top_k.map((entry) => [entry.label, entry.probability]));
      prediction.replaceChildren(
        "Prediction: ",
        el("strong", { class: "label" }, best.label),
        ` (${percent(best.probability)})`,
      );
      chart.replaceChildren(
        bars(meta.labels.map((label) => ({ label, probability: byLabel.get(label) ?? 0 }))),
      );
    } catch (error) {
      if (ask !== asked) return;
      prediction.replaceChildren();
      chart.replaceChildren(errorLine(error));
    }
    shown();
  }

  pad.addEventListener("pointerdown", (event) => {
    pad.setPointerCapture(event.pointerId);
    strokes.push([where(event)]);
    drawStrokes(context, strokes);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!pad.hasPointerCapture(event.pointerId)) return;
    strokes.at(-1).push(where(event));
    drawStrokes(context, strokes);
  });
  const end = (event) => {
    if (!pad.hasPointerCapture(event.pointerId)) return;
    pad.releasePointerCapture(event.pointerId);
    classify();
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  undo.addEventListener("click", () => strokes.pop() && classify());
  clear.addEventListener("click", () => {
    strokes.length = 0;
    classify();
  });
}

function rows(pixels) {
  return Array.from({ length: SIDE }, (_, y) => Array.from(pixels.slice(y * SIDE, (y + 1) * SIDE)));
}
