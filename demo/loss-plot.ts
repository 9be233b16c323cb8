/**
 * A live loss plot as inline SVG, drawn from training progress events (no chart library): a line
 * through the loss of every step, the x axis from 1 to the run's steps, the y axis from the lowest to
 * the highest loss so far. The <svg> carries the plotted losses in data-losses (comma-separated) and
 * their count in data-points.
 */

const SVG = 'http://www.w3.org/2000/svg';
const W = 360;
const H = 150;
const PAD = { left: 44, right: 12, top: 12, bottom: 24 };

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
  text?: string,
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

export class LossPlot {
  private losses: { step: number; loss: number }[] = [];
  private steps = 1;

  constructor(private readonly root: SVGSVGElement) {
    root.setAttribute('viewBox', `0 0 ${W} ${H}`);
    this.draw();
  }

  /** A new run of `steps` steps: clears the plot. */
  reset(steps: number): void {
    this.losses = [];
    this.steps = Math.max(1, steps);
    this.draw();
  }

  /** One step's loss (a skipped step, whose loss is not finite, is not drawn). */
  add(step: number, loss: number): void {
    if (Number.isFinite(loss)) this.losses.push({ step, loss });
    this.draw();
  }

  private draw(): void {
    const { root, losses } = this;
    root.replaceChildren();
    root.dataset.points = String(losses.length);
    root.dataset.losses = losses.map((p) => p.loss).join(',');
    const x0 = PAD.left;
    const x1 = W - PAD.right;
    const y0 = H - PAD.bottom;
    const y1 = PAD.top;
    root.append(svg('rect', { x: x0, y: y1, width: x1 - x0, height: y0 - y1, class: 'frame' }));
    if (losses.length === 0) {
      root.append(
        svg('text', { x: (x0 + x1) / 2, y: (y0 + y1) / 2, 'text-anchor': 'middle' }, 'loss per step'),
      );
      return;
    }
    let lo = Math.min(...losses.map((p) => p.loss));
    let hi = Math.max(...losses.map((p) => p.loss));
    if (hi - lo < 1e-6) {
      lo -= 0.05;
      hi += 0.05;
    }
    const x = (step: number) =>
      this.steps === 1 ? (x0 + x1) / 2 : x0 + ((step - 1) / (this.steps - 1)) * (x1 - x0);
    const y = (loss: number) => y0 - ((loss - lo) / (hi - lo)) * (y0 - y1);
    const points = losses.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(' ');
    root.append(
      svg('text', { x: x0 - 4, y: y1 + 4, 'text-anchor': 'end' }, hi.toFixed(3)),
      svg('text', { x: x0 - 4, y: y0, 'text-anchor': 'end' }, lo.toFixed(3)),
      svg('text', { x: x0, y: H - 6 }, 'step 1'),
      svg('text', { x: x1, y: H - 6, 'text-anchor': 'end' }, `step ${this.steps}`),
      svg('polyline', { points, class: 'line' }),
      ...losses.map((p) => svg('circle', { cx: x(p.step).toFixed(1), cy: y(p.loss).toFixed(1), r: 3 })),
    );
  }
}
