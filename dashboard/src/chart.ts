// Usage by day as stacked bars, one colour per model; the bar height is the charge (nanoTON).
import { h, svg, ton } from './dom';
import type { Usage } from './api';

const COLORS = ['#3390ec', '#f2994a', '#27ae60', '#9b51e0', '#eb5757', '#2d9cdb', '#f2c94c', '#6fcf97'];

function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

export function usageChart(u: Usage): HTMLElement {
  const models = [...new Set(u.daily.map((r) => r.model))].sort();
  const color = (m: string) => COLORS[models.indexOf(m) % COLORS.length];
  // Every day of the window, oldest first, empty days included.
  const days: string[] = [];
  const today = new Date();
  for (let i = u.days - 1; i >= 0; i--) days.push(isoDay(new Date(today.getTime() - i * 86_400_000)));
  const byDay = new Map<string, Map<string, number>>();
  for (const r of u.daily) {
    const m = byDay.get(r.date) ?? new Map();
    m.set(r.model, (m.get(r.model) ?? 0) + r.charge);
    byDay.set(r.date, m);
  }
  const totals = days.map((d) => [...(byDay.get(d)?.values() ?? [])].reduce((a, b) => a + b, 0));
  const max = Math.max(1, ...totals);
  const W = 640;
  const H = 180;
  const bw = W / days.length;
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H + 26}`, class: 'chart', role: 'img', 'aria-label': 'Charges by day and model' });
  days.forEach((d, i) => {
    let y = H;
    for (const m of models) {
      const v = byDay.get(d)?.get(m) ?? 0;
      if (!v) continue;
      const bh = Math.max(1, (v / max) * (H - 4));
      y -= bh;
      chart.appendChild(
        svg('rect', { x: i * bw + 1, y, width: Math.max(1, bw - 2), height: bh, fill: color(m) }, svg('title', {}, `${d} ${m}: ${ton(v)} TON`)),
      );
    }
    // First, middle and last day labelled; bars carry the rest in their tooltips.
    const mid = Math.floor((days.length - 1) / 2);
    if (i === 0 || i === mid || i === days.length - 1) {
      const anchor = i === 0 ? 'start' : i === days.length - 1 ? 'end' : 'middle';
      const x = i === 0 ? 0 : i === days.length - 1 ? W : i * bw + bw / 2;
      chart.appendChild(svg('text', { x, y: H + 20, 'text-anchor': anchor, class: 'axis' }, d.slice(5)));
    }
  });
  const total = totals.reduce((a, b) => a + b, 0);
  return h(
    'div',
    { class: 'chart-box' },
    h('div', { class: 'chart-head' }, h('strong', {}, `${ton(total)} TON`), ` over ${u.days} days`),
    chart,
    h('div', { class: 'legend' }, models.length ? models.map((m) => h('span', {}, h('i', { style: `background:${color(m)}` }), m)) : h('span', { class: 'muted' }, 'No charges yet')),
  );
}
