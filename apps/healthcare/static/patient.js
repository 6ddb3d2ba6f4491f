// The patient page: the slice viewer (a slider per plane, overlay on/off) and the study upload, whose
// bytes show as the browser sends them (XHR upload progress) and whose segmentation shows as the
// server reports it (Server-Sent Events of the ingest job); once the study is in, the page reloads
// on it, so the viewer, the volume plot and the table show it.
(() => {
  "use strict";
  const base = document.body.dataset.base || "";

  const viewer = document.querySelector(".viewer");
  const overlay = document.getElementById("overlay");
  function showSlice(plane) {
    const slider = document.getElementById(`slider-${plane}`);
    document.getElementById(`index-${plane}`).textContent = slider.value;
    const on = overlay && overlay.checked ? 1 : 0;
    document.getElementById(`slice-${plane}`).src = `${viewer.dataset.slices}/${plane}/${slider.value}.png?overlay=${on}`;
  }
  if (viewer) {
    const planes = [...viewer.querySelectorAll("[data-plane]")].map((f) => f.dataset.plane);
    for (const plane of planes) {
      document.getElementById(`slider-${plane}`).addEventListener("input", () => showSlice(plane));
    }
    if (overlay) overlay.addEventListener("change", () => planes.forEach(showSlice));
  }

  const form = document.getElementById("upload");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const acquired = $("acquired");
  if (!acquired.value) acquired.value = new Date().toISOString().slice(0, 10);

  function fail(error) {
    const box = $("upload-error");
    box.hidden = false;
    box.replaceChildren(document.createTextNode(error.message || error.error || "the upload failed"));
    for (const v of error.violations || []) {
      const line = document.createElement("div");
      line.textContent = `${v.field || v[0]}: ${v.description || v[1]}`;
      box.appendChild(line);
    }
    $("upload-button").disabled = false;
  }

  function follow(job) {
    const events = new EventSource(`${base}/jobs/${job.job_id}/events`);
    events.addEventListener("job", (event) => {
      const state = JSON.parse(event.data);
      $("segment-state").textContent = state.state + (state.windows_total ? ` ${state.windows_done}/${state.windows_total} windows` : "");
      $("segment-bar").value = state.windows_total ? state.windows_done / state.windows_total
        : (state.total_bytes ? state.sent_bytes / state.total_bytes : 0);
      form.dataset.state = state.state;
      if (state.state === "done") {
        events.close();
        $("segment-bar").value = 1;
        location.assign(`${location.pathname}?study=${encodeURIComponent(state.study_id)}`);
      } else if (state.state === "failed") {
        events.close();
        fail(state.error || {});
      }
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("study-file").files[0];
    if (!file) return;
    $("upload-error").hidden = true;
    $("progress").hidden = false;
    $("upload-button").disabled = true;
    const request = new XMLHttpRequest();
    request.open("POST", `${form.dataset.action}?wait=false&acquired=${encodeURIComponent(acquired.value)}`);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.setRequestHeader("Accept", "application/json");
    request.upload.addEventListener("progress", (p) => {
      if (p.lengthComputable) {
        $("upload-bar").value = p.loaded / p.total;
        $("upload-state").textContent = `uploaded ${Math.round(p.loaded / 1024)} of ${Math.round(p.total / 1024)} KiB`;
      }
    });
    request.addEventListener("load", () => {
      let reply = {};
      try { reply = JSON.parse(request.responseText); } catch (e) { reply = { error: request.statusText }; }
      if (request.status === 202) {
        $("upload-bar").value = 1;
        $("upload-state").textContent = "uploaded";
        follow(reply.job);
      } else {
        fail({ message: reply.error, violations: reply.violations });
      }
    });
    request.addEventListener("error", () => fail({ message: "the upload was interrupted" }));
    request.send(file);
  });
})();
