// Live updates of the fleet: one Server-Sent Events stream of fleet snapshots; each snapshot
// rewrites the cells marked data-field of every element marked data-asset, and draws each
// machine's health trend as an SVG sparkline from the snapshots seen since the page opened.
(() => {
  "use strict";
  const base = document.body.dataset.base || "";
  const live = document.getElementById("live");
  const healthSeen = {};
  const SPARK_POINTS = 60;

  const fixed = (value, digits = 1) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));

  function set(scope, field, text) {
    for (const cell of scope.querySelectorAll(`[data-field="${field}"]`)) {
      if (cell.textContent !== text) {
        cell.textContent = text;
        cell.classList.remove("changed");
        void cell.offsetWidth; // restart the highlight animation
        cell.classList.add("changed");
      }
    }
  }

  function orderLink(order) {
    const link = document.createElement("a");
    link.className = `order ${order.state}`;
    link.href = `${base}/work-orders?state=active#order-${order.order_id}`;
    link.textContent = `#${order.order_id} ${order.reason} (${order.state})`;
    return link;
  }

  function spark(scope, assetId, health) {
    const line = scope.querySelector("svg.spark polyline");
    if (!line || health === null || health === undefined) return;
    const seen = (healthSeen[assetId] ||= []);
    seen.push(health);
    if (seen.length > SPARK_POINTS) seen.shift();
    const step = 100 / Math.max(seen.length - 1, 1);
    line.setAttribute("points", seen.map((h, i) => `${(i * step).toFixed(1)},${(22 - h * 20).toFixed(1)}`).join(" "));
  }

  function update(scope, asset) {
    set(scope, "health", fixed(asset.health, 2));
    scope.classList.toggle("worn", asset.health !== null && asset.health < 0.3);
    set(scope, "rul", `${fixed(asset.rul)} [${fixed(asset.rul_lower)} – ${fixed(asset.rul_upper)}]`);
    set(scope, "anomalies",
        `${asset.open_anomalies} · ${fixed(asset.anomaly_score, 3)} / ${fixed(asset.anomaly_threshold, 3)}`);
    set(scope, "inspection", asset.inspection || "—");
    set(scope, "acoustic", fixed(asset.acoustic_score, 3) + (asset.acoustic_anomalous ? " anomalous" : ""));
    set(scope, "revision", String(asset.revision));
    const orders = scope.querySelector('[data-field="work_orders"]');
    if (orders) orders.replaceChildren(...asset.work_orders.map(orderLink));
    spark(scope, asset.asset_id, asset.health);
  }

  function showOutages(outages) {
    const box = document.getElementById("outages");
    box.replaceChildren(...outages.map((outage) => {
      const line = document.createElement("p");
      line.className = "outage";
      line.textContent = `${outage.service} unavailable (${outage.code}): ${outage.detail}`;
      return line;
    }));
  }

  function render(snapshot) {
    const version = document.getElementById("fleet-version");
    if (version) {
      version.dataset.version = snapshot.version;
      version.textContent = `update ${snapshot.version}`;
    }
    showOutages(snapshot.outages);
    const table = document.getElementById("fleet");
    if (table) {
      const shown = [...table.querySelectorAll("tbody tr[data-asset]")].map((row) => row.dataset.asset);
      if (shown.join("\n") !== snapshot.assets.map((a) => a.asset_id).join("\n")) {
        location.reload(); // machines joined: the server renders the new rows
        return;
      }
    }
    for (const asset of snapshot.assets) {
      for (const scope of document.querySelectorAll(`[data-asset="${CSS.escape(asset.asset_id)}"]`)) {
        update(scope, asset);
      }
    }
  }

  const source = new EventSource(`${base}/events`);
  source.addEventListener("fleet", (event) => {
    live.textContent = "live";
    live.classList.add("on");
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.classList.remove("on");
  };
})();
