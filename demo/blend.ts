/**
 * Blend sliders: every LoRA-family adapter the runtime holds (the manifest's LoRA adapters once
 * downloaded, and the personal adapter once trained) with a checkbox and a weight slider.
 * "Apply blend" activates the checked ones with their weights,
 * rt.adapters.activate([{ id, weight }, ...]): their ranks concatenate, each B scaled by its weight.
 * The sliders show the worker's active set again after every change.
 */
import type { RemoteRuntime } from '../src/client.js';
import type { AdapterInfo } from '../src/runtime.js';
import { changed, onChange, refresher } from './changes.js';
import { $, element, errorText } from './dom.js';

/** PEFT types that blend by rank concatenation (DoRA is a LORA variant). */
const LORA_FAMILY = new Set(['LORA', 'ADALORA']);

export function wireBlend(rt: RemoteRuntime): void {
  const list = $('blend');
  const apply = $<HTMLButtonElement>('blend-apply');
  const status = $('blend-status');

  const refresh = refresher(async () => {
    const [adapters, active] = await Promise.all([rt.adapters.list(), rt.adapters.active()]);
    const lora = adapters
      .filter((a: AdapterInfo) => LORA_FAMILY.has(a.peftType))
      .sort((a, b) => a.id.localeCompare(b.id));
    list.replaceChildren(
      ...lora.map((a) => {
        const spec = active.find((s) => s.id === a.id);
        const check = element('input', { type: 'checkbox', checked: spec !== undefined });
        const slider = element('input', {
          type: 'range',
          min: '0',
          max: '1.5',
          step: '0.05',
          value: String(spec?.weight ?? 1),
        });
        const value = element('output', {}, Number(slider.value).toFixed(2));
        slider.addEventListener('input', () => {
          value.textContent = Number(slider.value).toFixed(2);
          check.checked = true;
        });
        const li = element(
          'li',
          {},
          element('label', {}, check, ` ${a.id} `, element('small', {}, a.variant ?? a.peftType)),
          slider,
          value,
        );
        li.dataset.id = a.id;
        return li;
      }),
    );
    apply.disabled = lora.length === 0;
    status.textContent =
      lora.length === 0
        ? 'Download a LoRA adapter or train the personal adapter to blend.'
        : `Active: ${active.map((s) => `${s.id} ×${(s.weight ?? 1).toFixed(2)}`).join(' + ') || 'base model'}`;
  });

  apply.addEventListener('click', () => {
    const specs = [...list.querySelectorAll('li')]
      .filter((li) => li.querySelector<HTMLInputElement>('input[type=checkbox]')?.checked)
      .map((li) => ({
        id: li.dataset.id as string,
        weight: Number(li.querySelector<HTMLInputElement>('input[type=range]')?.value),
      }));
    apply.disabled = true;
    void (specs.length ? rt.adapters.activate(specs) : rt.adapters.deactivate())
      .then(
        () => changed('adapters'),
        (e: unknown) => (status.textContent = errorText(e)),
      )
      .finally(() => (apply.disabled = false));
  });
  onChange(['adapters', 'personal'], () => void refresh());
  void refresh();
}
