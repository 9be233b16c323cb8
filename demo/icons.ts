/**
 * The app's icons, drawn at build time (no image library): demo/icon.svg's shape, a white "E" of
 * round-capped strokes on a green rounded square, rasterized with 4x4 supersampling and written as
 * PNG (./png.ts). The maskable icon fills the whole square (the launcher cuts its own shape); its
 * glyph stays inside the safe zone, the centred circle of 80% of the size.
 */
import { encodePng } from './png.js';

/** In a 64 x 64 space, as icon.svg: the strokes' segments, their half width, the corner radius. */
const STROKES: [number, number, number, number][] = [
  [21, 20, 21, 44],
  [21, 20, 43, 20],
  [21, 32, 37, 32],
  [21, 44, 43, 44],
];
const HALF_WIDTH = 3;
const RADIUS = 12;
const BACKGROUND = [0x22, 0xaa, 0x77];

/** Within HALF_WIDTH of one of the strokes. */
function onGlyph(px: number, py: number): boolean {
  for (const [ax, ay, bx, by] of STROKES) {
    const dx = bx - ax;
    const dy = by - ay;
    const t = Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)));
    const ex = px - (ax + t * dx);
    const ey = py - (ay + t * dy);
    if (ex * ex + ey * ey <= HALF_WIDTH * HALF_WIDTH) return true;
  }
  return false;
}

function insideRoundedSquare(x: number, y: number): boolean {
  const dx = Math.max(RADIUS - x, 0, x - (64 - RADIUS));
  const dy = Math.max(RADIUS - y, 0, y - (64 - RADIUS));
  return dx * dx + dy * dy <= RADIUS * RADIUS;
}

/** RGBA pixels of the icon at `size` x `size`. */
export function drawIcon(size: number, { maskable = false } = {}): Uint8Array {
  const rgba = new Uint8Array(size * size * 4);
  const n = 4; // samples per axis
  for (let py = 0; py < size; py++) {
    for (let px = 0; px < size; px++) {
      let background = 0;
      let glyph = 0;
      for (let sy = 0; sy < n; sy++) {
        for (let sx = 0; sx < n; sx++) {
          const x = ((px + (sx + 0.5) / n) / size) * 64;
          const y = ((py + (sy + 0.5) / n) / size) * 64;
          if (!maskable && !insideRoundedSquare(x, y)) continue;
          background++;
          if (onGlyph(x, y)) glyph++;
        }
      }
      const g = background === 0 ? 0 : glyph / background;
      const at = (py * size + px) * 4;
      for (let c = 0; c < 3; c++) rgba[at + c] = Math.round(BACKGROUND[c] * (1 - g) + 255 * g);
      rgba[at + 3] = Math.round((background / (n * n)) * 255);
    }
  }
  return rgba;
}

/** The PNG icons the web manifest lists: file name -> bytes. */
export function appIcons(): Map<string, Uint8Array> {
  return new Map([
    ['icon-192.png', encodePng(192, 192, drawIcon(192))],
    ['icon-512.png', encodePng(512, 512, drawIcon(512))],
    ['icon-maskable-512.png', encodePng(512, 512, drawIcon(512, { maskable: true }))],
  ]);
}
