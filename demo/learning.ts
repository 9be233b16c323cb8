/**
 * The learning panel: the personal LoRA adapter that learns on the device from the feedback given
 * under replies (./feedback.ts). It shows how much feedback is logged (rt.personal.feedbackLog()),
 * trains a new version on it ("Train now": method sft | kto | dpo, steps, learning rate;
 * rt.train(request, onProgress), cancellable), plots the loss of every step as it comes
 * (./loss-plot.ts), lists the versions (rt.personal.history(), the current one marked) with a
 * rollback button each, and exports the current version as a zip holding a PEFT folder
 * (adapter_config.json + adapter_model.safetensors: rt.personal.export()), which PEFT, vLLM or
 * LoRAX load. Training runs in the worker: the page and the chat stay responsive meanwhile.
 */
import type { LoraInit, PersonalVersion, RemoteRuntime, TrainMethod } from '../src/client.js';
import { writeAdapterBundle } from '../src/store/bundle.js';
import { changed, onChange, refresher } from './changes.js';
import { $, download, element, errorText, formatBytes } from './dom.js';
import { LossPlot } from './loss-plot.js';

/** How the demo's personal adapter starts: a rank-4 LoRA on every linear module. */
export const PERSONAL_LORA: LoraInit = { rank: 4, targets: 'all-linear' };

/** A learning rate per method that suits a handful of feedback events (README: learning from feedback). */
export const LEARNING_RATES: Record<Exclude<TrainMethod, 'rlaif'>, number> = {
  sft: 2e-3,
  kto: 2e-3,
  dpo: 5e-4,
};

const PERSONAL_ID = 'personal';

function describeVersion(v: PersonalVersion): string {
  const loss = v.loss ? ` · loss ${v.loss.first.toFixed(3)} → ${v.loss.last.toFixed(3)}` : '';
  const parent = v.parent === undefined ? '' : ` · from v${v.parent}`;
  const time = new Date(v.createdAt).toLocaleTimeString();
  return `${v.method} · ${v.steps} steps on ${v.examples} examples${loss}${parent} · ${formatBytes(v.bytes)} · ${time}`;
}

export function wireLearning(rt: RemoteRuntime): void {
  const plot = new LossPlot($<SVGSVGElement>('loss-plot'));
  const method = $<HTMLSelectElement>('train-method');
  const lr = $<HTMLInputElement>('train-lr');
  const status = $('train-status');
  const run = $<HTMLButtonElement>('train-run');
  const stop = $<HTMLButtonElement>('train-stop');
  const exportButton = $<HTMLButtonElement>('export');
  const useButton = $<HTMLButtonElement>('personal-use');
  let controller: AbortController | undefined;

  const setStatus = (state: string, text: string) => {
    status.dataset.state = state;
    status.textContent = text;
  };
  method.addEventListener('change', () => {
    lr.value = String(LEARNING_RATES[method.value as keyof typeof LEARNING_RATES]);
  });
  lr.value = String(LEARNING_RATES[method.value as keyof typeof LEARNING_RATES]);

  const showFeedback = refresher(async () => {
    const log = await rt.personal.feedbackLog();
    const count = (test: (e: object) => boolean) => log.filter((s) => test(s.event)).length;
    const up = count((e) => 'rating' in e && e.rating === 1);
    const down = count((e) => 'rating' in e && e.rating === -1);
    const edits = count((e) => 'correction' in e);
    const counter = $('feedback-count');
    counter.dataset.count = String(log.length);
    counter.textContent =
      log.length === 0
        ? 'No feedback yet: rate or edit a reply in the chat.'
        : `${log.length} feedback event${log.length === 1 ? '' : 's'} logged: ${up} thumbs up, ${down} thumbs down, ${edits} edit${edits === 1 ? '' : 's'}.`;
  });

  const showVersions = refresher(async () => {
    const [history, current, active] = await Promise.all([
      rt.personal.history(),
      rt.personal.current(),
      rt.adapters.active(),
    ]);
    const list = $('versions');
    list.replaceChildren(
      ...history
        .slice()
        .reverse()
        .map((v) => {
          const isCurrent = v.version === current?.version;
          const rollback = element(
            'button',
            { type: 'button', className: 'rollback' },
            `Roll back to v${v.version}`,
          );
          rollback.hidden = isCurrent;
          rollback.addEventListener('click', () => {
            rollback.disabled = true;
            void rt.personal
              .rollback(v.version)
              .then(
                () => changed('personal', 'adapters'),
                (e: unknown) => setStatus('failed', errorText(e)),
              )
              .finally(() => (rollback.disabled = false));
          });
          const li = element(
            'li',
            {},
            element('strong', {}, `v${v.version}`),
            isCurrent ? element('span', { className: 'tag current' }, 'current') : '',
            ' ',
            element('small', {}, describeVersion(v)),
            ' ',
            rollback,
          );
          li.dataset.version = String(v.version);
          li.dataset.current = String(isCurrent);
          return li;
        }),
    );
    const spec = active.find((a) => a.id === PERSONAL_ID);
    const personal = $('personal-status');
    personal.dataset.current = current ? String(current.version) : '';
    personal.dataset.active = String(spec !== undefined);
    personal.textContent = !current
      ? 'Not trained yet.'
      : `v${current.version} is current` +
        (spec === undefined
          ? ', not active.'
          : active.length > 1
            ? `, active in a blend (weight ${spec.weight ?? 1}).`
            : ', active.');
    exportButton.disabled = !current;
    useButton.disabled = !current || (active.length === 1 && spec !== undefined);
  });

  $('train').addEventListener('submit', (event) => {
    event.preventDefault();
    const steps = Math.max(1, Math.round(Number($<HTMLInputElement>('train-steps').value) || 1));
    const request = {
      method: method.value as TrainMethod,
      steps,
      lr: Number(lr.value) || LEARNING_RATES.sft,
    };
    controller = new AbortController();
    plot.reset(steps);
    setStatus('running', `Training ${request.method} for ${steps} steps in the worker…`);
    run.disabled = true;
    stop.disabled = false;
    void rt
      .train({ ...request, signal: controller.signal }, (e) => {
        if (e.stage !== 'train') return;
        plot.add(e.step, e.loss);
        setStatus(
          'running',
          `step ${e.step}/${e.steps} · loss ${e.loss.toFixed(4)}${e.skipped ? ' (skipped: not finite)' : ''}`,
        );
      })
      .then(
        (report) => {
          const v = report.version;
          const loss = v.loss ? `: loss ${v.loss.first.toFixed(4)} → ${v.loss.last.toFixed(4)}` : '';
          setStatus(
            'done',
            `v${v.version} trained in ${report.seconds.toFixed(1)} s on ${report.examples} examples${loss}; it is active now.`,
          );
          changed('personal', 'adapters', 'storage');
        },
        (e: unknown) => {
          if (e instanceof DOMException && e.name === 'AbortError')
            setStatus('aborted', 'Stopped: nothing was committed, the current version stays.');
          else setStatus('failed', errorText(e));
        },
      )
      .finally(() => {
        run.disabled = false;
        stop.disabled = true;
      });
  });
  stop.addEventListener('click', () => controller?.abort());

  exportButton.addEventListener('click', () => {
    void (async () => {
      const current = await rt.personal.current();
      if (!current) return;
      const folder = `personal-v${current.version}`;
      const files = await rt.personal.export(current.version);
      const zip = writeAdapterBundle(
        new Map([...files].map(([name, bytes]) => [`${folder}/${name}`, bytes])),
      );
      download(`${folder}.zip`, zip, 'application/zip');
    })().catch((e: unknown) => setStatus('failed', errorText(e)));
  });

  useButton.addEventListener('click', () => {
    void rt.adapters.activate(PERSONAL_ID).then(
      () => changed('adapters'),
      (e: unknown) => setStatus('failed', errorText(e)),
    );
  });

  onChange(['feedback'], () => void showFeedback());
  onChange(['personal', 'adapters'], () => void showVersions());
  void showFeedback();
  void showVersions();
}
