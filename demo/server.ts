/**
 * A small static server for the demo build, with the headers that make the page cross-origin isolated
 * (COOP/COEP: SharedArrayBuffer, so onnxruntime-web can run wasm threads). Every response is
 * revalidated (`Cache-Control: no-cache`), so a new build, service worker included, is seen at once.
 *
 *   npx tsx demo/server.ts [dir] [--port 8080] [--host 127.0.0.1]
 */
import { createReadStream, existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ISOLATION_HEADERS = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.wasm': 'application/wasm',
};

export interface DemoServer {
  origin: string;
  port: number;
  /** Paths requested so far (GET and HEAD), in order. */
  requests: string[];
  close(): Promise<void>;
}

/** Serves `root` (GET and HEAD; `/` and folders serve their index.html). Port 0: a free port. */
export async function startDemoServer(
  root: string,
  { port = 0, host = '127.0.0.1' } = {},
): Promise<DemoServer> {
  const base = path.resolve(root);
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    void (async () => {
      const pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      requests.push(pathname);
      let file = path.join(base, path.normalize(pathname));
      let info = file.startsWith(base) ? await stat(file).catch(() => undefined) : undefined;
      if (info?.isDirectory()) {
        file = path.join(file, 'index.html');
        info = await stat(file).catch(() => undefined);
      }
      const headers = { ...ISOLATION_HEADERS, 'Cache-Control': 'no-cache' };
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { ...headers, Allow: 'GET, HEAD' }).end();
      } else if (!info?.isFile()) {
        res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' }).end(`not found: ${pathname}`);
      } else {
        res.writeHead(200, {
          ...headers,
          'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
          'Content-Length': info.size,
        });
        if (req.method === 'HEAD') res.end();
        else createReadStream(file).pipe(res);
      }
    })().catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(e));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const address = server.address() as AddressInfo;
  const origin = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
  return {
    origin,
    port: address.port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const option = (name: string) => {
    const at = args.indexOf(name);
    return at >= 0 ? args.splice(at, 2)[1] : undefined;
  };
  const port = Number(option('--port') ?? 8080);
  const host = option('--host') ?? '127.0.0.1';
  const dir = args[0] ?? fileURLToPath(new URL('out/', import.meta.url));
  if (!existsSync(path.join(dir, 'index.html'))) {
    console.error(`${dir} has no index.html: build the demo first (npm run demo:build)`);
    process.exit(1);
  }
  const server = await startDemoServer(dir, { port, host });
  console.log(`serving ${dir} at ${server.origin}/ (cross-origin isolated: COOP/COEP)`);
}
