// dcmdb's web page: the three things the server cannot do alone.
"use strict";

// A series without a preview (a report, a waveform) says so instead of a broken image.
function noPreview(img) {
  const note = document.createElement("span");
  note.className = "no-preview";
  note.textContent = "no preview";
  img.replaceWith(note);
}
document.querySelectorAll("img.thumb").forEach((img) => {
  if (img.complete && img.naturalWidth === 0) noPreview(img);
  else img.addEventListener("error", () => noPreview(img));
});

// Retrieval jobs: their progress, read from the API (GET /retrievals) every few seconds.
const jobs = document.querySelector("table[data-poll]");
if (jobs) {
  const status = document.querySelector("[data-poll-status]");
  const ended = new Set(["completed", "partial", "failed", "cancelled"]);
  const sum = (studies, field) => studies.reduce((n, s) => n + (s[field] || 0), 0);
  const moment = (text) => new Date(text).toISOString().slice(0, 16).replace("T", " ") + " UTC";

  const update = (row, job) => {
    const badge = row.querySelector('[data-field="state"] .badge');
    badge.textContent = job.state;
    badge.className = `badge ${job.state}`;
    const done = sum(job.studies, "completed");
    const expected = sum(job.studies, "expected_instances");
    const bar = row.querySelector("progress");
    bar.max = expected || 1;
    bar.value = expected ? done : 0;
    row.querySelector('[data-field="progress"] .sub').textContent =
      `${done}${expected ? ` of ${expected}` : ""} instances, ${job.studies.length} studies`;
    row.querySelector('[data-field="finished"]').textContent = job.finished_at ? moment(job.finished_at) : "";
    if (ended.has(job.state)) row.querySelector("form")?.remove();
  };

  const poll = async () => {
    let active = false;
    try {
      const answer = await fetch(jobs.dataset.poll, { headers: { Accept: "application/json" } });
      if (!answer.ok) throw new Error(`dcmdb answered ${answer.status}`);
      for (const job of await answer.json()) {
        const row = jobs.querySelector(`tr[data-job="${job.id}"]`);
        if (row) update(row, job);
        active ||= !ended.has(job.state);
      }
      status.textContent = `Updated at ${new Date().toLocaleTimeString()}.`;
    } catch (problem) {
      status.textContent = `Progress could not be read (${problem.message}); trying again.`;
      active = true;
    }
    setTimeout(poll, active ? 2000 : 10000);
  };
  setTimeout(poll, 2000);
}

// A command to copy: the clipboard where the browser allows it (a secure context), else
// the text selected for Ctrl+C.
document.querySelectorAll("button[data-copy]").forEach((button) => {
  const source = document.getElementById(button.dataset.copy);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(source.textContent);
      button.textContent = "Copied";
    } catch {
      getSelection().selectAllChildren(source);
      button.textContent = "Selected: press Ctrl+C";
    }
  });
});
