/** The worker entry: the runtime behind comlink, nothing more. The page side is createRuntime (src/client.ts). */
import { expose } from 'comlink';
import { RuntimeWorker } from '../src/worker-runtime.js';

expose(new RuntimeWorker());
