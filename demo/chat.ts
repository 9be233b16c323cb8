/**
 * The chat: a prompt box, sampling controls (temperature: 0 is greedy; max new tokens), a reply
 * streamed token by token into the log, and a stop button (an AbortSignal: the worker stops between
 * tokens). The base model continues text (a story model, no chat template), so each turn is one
 * prompt and its continuation, made by the adapters active when it was sent (named under the reply).
 *
 * The reply being written, and after it the last one, is `#output` (data-state running | done,
 * data-finish length | stop | aborted | error); `onReply` gets every finished reply (the learning
 * panel adds its feedback buttons under it) and `onSpeed` its token rate.
 */
import type { RemoteRuntime } from '../src/client.js';
import type { ActiveSpec } from '../src/runtime.js';
import { $, element, errorText } from './dom.js';
import type { SpeedSample } from './status.js';

export interface Reply {
  prompt: string;
  text: string;
  finish: string;
  /** The reply's element in the log (the place for its feedback controls). */
  element: HTMLElement;
}

export interface ChatHooks {
  onReply(reply: Reply): void;
  onSpeed(sample: SpeedSample): void;
}

const describeActive = (active: ActiveSpec[]) =>
  active.length === 0
    ? 'base model'
    : active
        .map((a) => (a.weight === undefined || a.weight === 1 ? a.id : `${a.id} ×${a.weight}`))
        .join(' + ');

/** Shows the temperature next to its slider. */
function wireSamplingControls(): void {
  const temperature = $<HTMLInputElement>('temperature');
  const show = () => {
    const t = Number(temperature.value);
    $('temperature-value').textContent = t === 0 ? '0 (greedy)' : t.toFixed(2);
  };
  temperature.addEventListener('input', show);
  show();
}

export function wireChat(rt: RemoteRuntime, hooks: ChatHooks): void {
  const log = $('log');
  const run = $<HTMLButtonElement>('run');
  const stop = $<HTMLButtonElement>('stop');
  let controller: AbortController | undefined;
  wireSamplingControls();
  stop.addEventListener('click', () => controller?.abort());

  $('generate').addEventListener('submit', (event) => {
    event.preventDefault();
    const prompt = $<HTMLTextAreaElement>('prompt').value;
    const maxTokens = Number($<HTMLInputElement>('max-tokens').value) || 100;
    const temperature = Number($<HTMLInputElement>('temperature').value) || 0;
    controller = new AbortController();
    const signal = controller.signal;

    document.getElementById('output')?.removeAttribute('id');
    const text = element('div', { id: 'output', className: 'text' });
    text.dataset.state = 'running';
    const meta = element('small', { className: 'meta' }, 'writing…');
    const reply = element('div', { className: 'assistant' }, text, meta);
    log.append(element('li', { className: 'turn' }, element('div', { className: 'user' }, prompt), reply));
    log.scrollTop = log.scrollHeight;
    $('error').textContent = '';
    run.disabled = true;
    stop.disabled = false;

    void (async () => {
      const using = rt.adapters.active().then(describeActive, () => 'unknown adapters');
      const start = performance.now();
      let first: number | undefined;
      let tokens = 0;
      let finish = 'error';
      try {
        const chunks = rt.generate(prompt, { maxTokens, temperature, signal });
        for (;;) {
          const next = await chunks.next();
          if (next.done) {
            finish = next.value;
            break;
          }
          first ??= performance.now();
          tokens++;
          text.textContent += next.value.text;
          log.scrollTop = log.scrollHeight;
        }
      } catch (e) {
        finish = e instanceof DOMException && e.name === 'AbortError' ? 'aborted' : 'error';
        if (finish === 'error') $('error').textContent = errorText(e);
      }
      const seconds = (performance.now() - start) / 1000;
      const speed: SpeedSample = {
        tokens,
        seconds,
        ...(first === undefined ? {} : { firstTokenSeconds: (first - start) / 1000 }),
      };
      if (tokens > 0) hooks.onSpeed(speed);
      meta.textContent =
        `${await using} · ${tokens} tokens · ${(tokens / seconds).toFixed(0)} tok/s` +
        (temperature === 0 ? ' · greedy' : ` · temperature ${temperature}`) +
        (finish === 'aborted' ? ' · stopped' : finish === 'stop' ? ' · stop sequence' : '');
      text.dataset.finish = finish;
      text.dataset.state = 'done';
      run.disabled = false;
      stop.disabled = true;
      if (finish !== 'error' && text.textContent !== '')
        hooks.onReply({ prompt, text: text.textContent ?? '', finish, element: reply });
    })();
  });
  run.disabled = false;
}
