/**
 * Feedback under a reply, for the personal adapter: thumbs up / thumbs down
 * (rt.feedback({ prompt, completion, rating })) and "edit" (a textarea to correct the reply:
 * rt.feedback({ prompt, completion, correction })). Each goes into the feedback log in IndexedDB;
 * "Train now" in the learning panel learns from it. The reply's element records what was given:
 * data-rating = 1 | -1, data-corrected = true.
 */
import type { FeedbackEvent, RemoteRuntime } from '../src/client.js';
import { changed } from './changes.js';
import { element, errorText } from './dom.js';
import type { Reply } from './chat.js';

/** A thumb as inline SVG (no emoji font needed); thumbs down is thumbs up turned over. */
function thumb(up: boolean): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const icon = document.createElementNS(ns, 'svg');
  icon.setAttribute('viewBox', '0 0 24 24');
  icon.setAttribute('class', 'thumb');
  icon.setAttribute('aria-hidden', 'true');
  if (!up) icon.setAttribute('transform', 'rotate(180)');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute(
    'd',
    'M2 10h4v11H2zM8 10l4-7c1.5 0 2.5 1 2 3l-1 4h7c1.2 0 2 1 1.7 2.2l-1.9 7.3c-.3.9-1 1.5-2 1.5H8z',
  );
  icon.append(path);
  return icon;
}

export function attachFeedback(rt: RemoteRuntime, reply: Reply): void {
  const { prompt, text: completion } = reply;
  const up = element(
    'button',
    { type: 'button', className: 'up', title: 'Good reply (thumbs up)' },
    thumb(true),
  );
  const down = element(
    'button',
    { type: 'button', className: 'down', title: 'Bad reply (thumbs down)' },
    thumb(false),
  );
  up.setAttribute('aria-label', 'thumbs up');
  down.setAttribute('aria-label', 'thumbs down');
  const edit = element(
    'button',
    { type: 'button', className: 'edit', title: 'Correct this reply' },
    '✎ Edit',
  );
  const note = element('small', { className: 'note' });
  const bar = element('div', { className: 'feedback' }, up, down, edit, note);
  reply.element.append(bar);

  const send = async (event: FeedbackEvent, done: string): Promise<boolean> => {
    note.className = 'note';
    note.textContent = 'saving…';
    try {
      await rt.feedback(event);
      note.textContent = done;
      changed('feedback', 'storage');
      return true;
    } catch (e) {
      note.className = 'note error';
      note.textContent = errorText(e);
      return false;
    }
  };

  const rate = async (rating: 1 | -1) => {
    up.disabled = down.disabled = true;
    if (await send({ prompt, completion, rating }, 'logged for training')) {
      reply.element.dataset.rating = String(rating);
      (rating === 1 ? up : down).setAttribute('aria-pressed', 'true');
    } else {
      up.disabled = down.disabled = false;
    }
  };
  up.addEventListener('click', () => void rate(1));
  down.addEventListener('click', () => void rate(-1));

  edit.addEventListener('click', () => {
    edit.disabled = true;
    const box = element('textarea', { className: 'correction', rows: 3, value: completion });
    const save = element('button', { type: 'button', className: 'save' }, 'Save correction');
    const cancel = element('button', { type: 'button', className: 'cancel' }, 'Cancel');
    const editor = element('div', { className: 'editor' }, box, save, cancel);
    bar.after(editor);
    box.focus();
    cancel.addEventListener('click', () => {
      editor.remove();
      edit.disabled = false;
    });
    save.addEventListener('click', () => {
      const correction = box.value;
      if (correction === completion) {
        note.textContent = 'unchanged: edit the text first';
        return;
      }
      save.disabled = true;
      void send({ prompt, completion, correction }, 'correction logged for training').then((ok) => {
        if (!ok) {
          save.disabled = false;
          return;
        }
        reply.element.dataset.corrected = 'true';
        editor.replaceWith(
          element('div', { className: 'corrected' }, element('small', {}, 'your edit: '), correction),
        );
      });
    });
  });
}
