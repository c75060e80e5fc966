// The page: send a photo to POST /predict, draw a box and a label on every face, list each face's probabilities.
"use strict";

const $ = (id) => document.getElementById(id);

function show(element, text) {
  element.textContent = text || "";
  element.hidden = !text;
}

function ageText(face) {
  if (face.age === null || face.age === undefined) return "";
  const interval = face.age_interval ? ` (${Math.round(face.age_interval[0])}-${Math.round(face.age_interval[1])})` : "";
  return ` \u00b7 ${Math.round(face.age)} y${interval}`;
}

function drawBoxes(answer) {
  const stage = $("stage");
  stage.querySelectorAll(".box").forEach((box) => box.remove());
  answer.faces.forEach((face, index) => {
    const [x, y, w, h] = face.box || [0, 0, answer.image.width, answer.image.height];
    const box = document.createElement("div");
    box.className = "box" + (y < answer.image.height * 0.08 ? " top" : "") +
      (x + w / 2 > answer.image.width / 2 ? " right" : "");
    box.dataset.testid = "face-box";
    box.style.left = `${(100 * x) / answer.image.width}%`;
    box.style.top = `${(100 * y) / answer.image.height}%`;
    box.style.width = `${(100 * w) / answer.image.width}%`;
    box.style.height = `${(100 * h) / answer.image.height}%`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${index + 1}: ${face.group}${ageText(face)}`;
    box.appendChild(label);
    stage.appendChild(box);
  });
}

function listFaces(answer) {
  const list = $("faces");
  list.replaceChildren();
  answer.faces.forEach((face) => {
    const item = document.createElement("li");
    const title = document.createElement("strong");
    title.textContent = `${face.group} (${Math.round(100 * face.confidence)}%)${ageText(face)}`;
    const bars = document.createElement("div");
    bars.className = "bars";
    for (const [group, probability] of Object.entries(face.probabilities)) {
      const name = document.createElement("span");
      name.textContent = group;
      const bar = document.createElement("div");
      bar.className = "bar" + (group === face.group ? " best" : "");
      const fill = document.createElement("span");
      fill.style.width = `${(100 * probability).toFixed(1)}%`;
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.textContent = `${Math.round(100 * probability)}%`;
      bars.append(name, bar, value);
    }
    item.append(title, bars);
    list.appendChild(item);
  });
}

async function predict(file) {
  show($("error"), "");
  $("result").hidden = true;
  if (!file) return;
  show($("status"), `Looking at ${file.name}...`);
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(file);
  const body = new FormData();
  body.append("image", file);
  let answer;
  try {
    const response = await fetch("/predict", { method: "POST", body });
    try {
      answer = await response.json();
    } catch (err) {
      answer = { error: `the server answered ${response.status} without an explanation` };
    }
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  } catch (err) {
    show($("status"), "");
    show($("error"), `Could not read this photo: ${err.message}`);
    return;
  }
  const count = answer.faces.length;
  show($("status"), `${count} face${count === 1 ? "" : "s"} in ${file.name} (${answer.image.width}x${answer.image.height})`);
  show($("note"), answer.note);
  $("result").hidden = false;
  drawBoxes(answer);
  listFaces(answer);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => predict(event.target.files[0]));
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (event) => predict(event.dataTransfer.files[0]));
  fetch("/info").then((response) => response.json()).then((info) => {
    const model = info.model || {};
    $("model").textContent = `Model: ${model.name} (${model.recipe} recipe, ${model.input_size} px), version ${model.version}` +
      (model.ages ? ", ages in years" : ", age groups only");
  }).catch(() => {});
}

setUp();
