// Keyboard shortcuts on a queued answer (no framework; served as a file, so the CSP forbids inline script).
document.addEventListener("keydown", (e) => {
  const form = document.getElementById("judge");
  if (!form) return;
  const typing = e.target instanceof HTMLTextAreaElement || e.target instanceof HTMLInputElement;
  if (typing) {
    if (e.key === "Enter" && e.ctrlKey) { e.preventDefault(); document.getElementById("wrong").click(); }
    if (e.key === "Escape") e.target.blur();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "c") { e.preventDefault(); document.getElementById("correct").click(); }
  else if (e.key === "w") { e.preventDefault(); document.getElementById("correction").focus(); }
  else if (e.key === "s") { e.preventDefault(); document.getElementById("skip").click(); }
  else if ("12345".includes(e.key) && e.key.length === 1) {
    const radio = form.querySelector(`input[name="critique_rating"][value="${e.key}"]`);
    if (radio) radio.checked = true;
  }
});
