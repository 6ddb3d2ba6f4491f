// The prompt form: a prompt is one line (the story request it becomes), so Enter in the prompt box starts
// the video as in a one-line field, and Shift+Enter does nothing rather than write a line break the
// studio would refuse. The box still wraps long prompts, which a one-line field would hide.
(() => {
  "use strict";
  const form = document.getElementById("job-form");
  const prompt = document.getElementById("prompt");
  if (!form || !prompt) return;
  prompt.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing) return;
    event.preventDefault();
    if (!event.shiftKey) form.requestSubmit();
  });
})();
