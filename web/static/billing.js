// Back from Stripe Checkout: follow the balance until the webhook's credits arrive (a minute).
"use strict";
(function () {
  const section = document.getElementById("billing-done");
  if (!section) return;
  const start = Number(section.dataset.balance);
  let tries = 0;
  async function poll() {
    tries += 1;
    try {
      const response = await fetch(section.dataset.balanceUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const body = await response.json();
        document.getElementById("balance").textContent = body.credits;
        if (body.credits !== start) { section.dataset.updated = "1"; return; }
      }
    } catch (_) { /* try again */ }
    if (tries < 60) setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
})();
