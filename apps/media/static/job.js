// The job page, live: one Server-Sent Events stream of the job (the JSON API's /events), each event the
// whole job; every event rewrites the steps (state and progress bar), the story as far as it has been
// written, the scene cards, the error, the actions the state allows, the models, and once the job is done
// puts the video in the page. The stream ends when the job is done, failed or cancelled. Delete asks first.
(() => {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const live = $("live");
  const ACTIVE = ["queued", "running"];
  const RETRYABLE = ["failed", "cancelled"];
  const FINISHED = ["done", "failed", "cancelled"];
  const files = root.dataset.files;
  const sceneFile = (index, suffix) => `${files}/scene-${String(index).padStart(2, "0")}.${suffix}`;
  const fixed = (value, digits = 1) => Number(value).toFixed(digits);
  const known = (value) => value !== null && value !== undefined;

  function setText(element, text) {
    if (element && element.textContent !== text) element.textContent = text;
  }

  function showProgress(bar, step) {
    if (step.total > 0) {
      bar.max = step.total;
      bar.value = Math.min(step.done, step.total);
    } else if (step.state === "running") {
      bar.removeAttribute("value"); // indeterminate: a count of tokens has no total
    } else {
      bar.max = 1;
      bar.value = step.state === "done" ? 1 : 0;
    }
  }

  function renderSteps(steps) {
    for (const step of steps) {
      const row = document.querySelector(`#steps [data-step="${step.name}"]`);
      if (!row) continue;
      if (row.dataset.state !== step.state) row.dataset.state = step.state;
      setText(row.querySelector('[data-field="state"]'), step.state);
      setText(row.querySelector('[data-field="detail"]'), step.detail || "");
      showProgress(row.querySelector('[data-field="progress"]'), step);
    }
  }

  function fillScene(card, scene) {
    card.dataset.scene = scene.index;
    setText(card.querySelector('[data-field="index"]'), String(scene.index));
    setText(card.querySelector('[data-field="text"]'), scene.text);
    setText(card.querySelector('[data-field="narration"]'),
            known(scene.narration_s) ? `${fixed(scene.narration_s)} s narrated` : "");
    const source = scene.picture_source;
    setText(card.querySelector('[data-field="caption"]'), source
      ? `picture: “${source.caption}”` + (known(source.similarity) ? ` (similarity ${fixed(source.similarity, 2)})` : "")
      : "");
    const picture = card.querySelector('[data-field="picture"]');
    picture.alt = source ? source.caption : "";
    if (scene.picture && picture.hidden) {
      picture.src = sceneFile(scene.index, "png");
      picture.hidden = false;
    }
  }

  function renderScenes(scenes) {
    const list = $("scenes");
    const template = $("scene-template").content.firstElementChild;
    for (const scene of scenes) {
      let card = list.querySelector(`[data-scene="${scene.index}"]`);
      if (!card) {
        card = template.cloneNode(true);
        list.appendChild(card);
      }
      fillScene(card, scene);
    }
  }

  function renderError(error) {
    const box = $("job-error");
    box.hidden = !error;
    const what = error && error.step ? `The ${error.step} step` : "The job";
    setText(box, error ? `${what} failed (${error.code}): ${error.message}` : "");
  }

  function renderModels(models) {
    const list = $("models");
    const seen = JSON.stringify(models || {});
    if (list.dataset.shown === seen) return;
    list.dataset.shown = seen;
    const entries = Object.entries(models || {});
    list.replaceChildren(...entries.flatMap(([role, model]) => {
      const term = document.createElement("dt");
      term.textContent = role;
      const description = document.createElement("dd");
      description.textContent = [`${model.name}${model.version ? " " + model.version : ""}`, model.provenance,
                                 model.device].filter(Boolean).join(" · ");
      return [term, description];
    }));
  }

  function renderVideo(job) {
    const section = $("video-section");
    if (!job.video || !section.hidden) return;
    const minutes = `${Math.floor(Math.round(job.video.duration_s) / 60)}:` +
                    String(Math.round(job.video.duration_s) % 60).padStart(2, "0");
    setText($("video-facts"), `${minutes} · ${job.video.width}×${job.video.height} · ` +
                              `${fixed(job.video.bytes / 1048576)} MiB`);
    const player = $("video-template").content.cloneNode(true);
    if (job.video.burned_subtitles) player.querySelector("track").removeAttribute("default");
    $("player").replaceChildren(player);
    section.hidden = false;
    loadBurnedTrack();
  }

  // Subtitles drawn into the frames: their track is not drawn again, but "hidden" (not "disabled") still
  // loads its cues, for scripts and assistive technology; the player's menu can show it.
  function loadBurnedTrack() {
    const video = $("video");
    const track = video && video.querySelector("track");
    if (track && !track.hasAttribute("default") && video.textTracks[0].mode === "disabled") {
      video.textTracks[0].mode = "hidden";
    }
  }

  function render(job) {
    root.dataset.state = job.state;
    root.dataset.version = job.version;
    const badge = $("job-state");
    setText(badge, job.state);
    badge.className = `state state-${job.state}`;
    setText($("queue-position"), job.queue_position ? `number ${job.queue_position} in the queue` : "");
    renderSteps(job.steps);
    setText($("story"), job.story || "");
    $("story").setAttribute("aria-busy", String(ACTIVE.includes(job.state)));
    renderScenes(job.scenes || []);
    renderError(job.error);
    renderModels(job.models);
    $("cancel-form").hidden = !ACTIVE.includes(job.state);
    $("retry-form").hidden = !RETRYABLE.includes(job.state);
    $("delete-form").hidden = !FINISHED.includes(job.state);
    renderVideo(job);
  }

  function follow() {
    const events = new EventSource(root.dataset.events);
    events.addEventListener("open", () => {
      setText(live, "live");
      live.classList.add("on");
    });
    events.addEventListener("error", () => {
      setText(live, "reconnecting…");
      live.classList.remove("on");
    });
    events.addEventListener("job", (event) => {
      const job = JSON.parse(event.data);
      render(job);
      if (FINISHED.includes(job.state)) {
        events.close();   // the server ends the stream here; reconnecting would only replay the end
        setText(live, "");
        live.classList.remove("on");
      }
    });
  }

  // Deleting cannot be undone: asked once more here (without scripts the form deletes at once).
  $("delete-form").addEventListener("submit", (event) => {
    if (!window.confirm(`Delete ${root.dataset.job} with its video, pictures and narration? This cannot be undone.`)) {
      event.preventDefault();
    }
  });

  // A finished job's page is already whole; a retried one is followed again after the form's redirect.
  if (!FINISHED.includes(root.dataset.state)) follow();
  loadBurnedTrack();
})();
