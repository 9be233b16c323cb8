/**
 * The tasks of the default model's LoRA experts (models/default-experts), and the prompts that
 * belong to each: what trains an expert, the example prompts its routing prototype is made from,
 * and the held-out prompts routing accuracy is measured on. One definition, read by
 * models/train-experts.ts, the routing-accuracy test and bench/mixtures.ts.
 *
 *   shakespeare  tinyshakespeare.txt, lower-cased (the base's text is lower-case); a prompt is the
 *                first line or two of a speech (up to 100 characters)
 *   dog          stories with a dog or a puppy
 *   seaside      stories at the beach or the sea
 *   royal        stories with a princess, a prince, a king, a queen or a castle
 *
 * An expert trains on the stories that mention its topic and no other. A story prompt is one
 * sentence of such a story that names the topic (and no other). Training text and example prompts
 * come from the first 80% of the stories and 90% of the play (as models/train-task-adapters.ts
 * splits it); held-out prompts from the rest, which no expert and no prototype has seen.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { splitStories } from './pretrain-default.js';
import { PromptRouter } from '../src/mixtures/prompt-router.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const CORPORA = path.join(ROOT, '..', 'shared', 'fixtures', 'corpora');
export const EXPERTS_DIR = path.join(ROOT, 'models', 'default-experts');
/** The Shakespeare expert is the demo's Shakespeare LoRA. */
export const SHAKESPEARE_DIR = path.join(ROOT, 'models', 'default-adapters', 'shakespeare');

export const TOPICS = {
  dog: /\b(dog|dogs|puppy|puppies)\b/,
  seaside: /\b(beach|sea|ocean|waves|sand|shore|seaside)\b/,
  royal: /\b(princess|prince|king|queen|castle)\b/,
} as const;
export type Topic = keyof typeof TOPICS;
export const EXPERT_IDS = ['shakespeare', 'dog', 'seaside', 'royal'] as const;
export type ExpertId = (typeof EXPERT_IDS)[number];

export interface ExpertTexts {
  /** Training text per expert: whole stories, or the play's text. */
  train: { stories: Record<Topic, string[]>; shakespeare: string };
  /** Prompts from the training split (prototypes) and the held-out split (accuracy), per expert. */
  examples: Record<ExpertId, string[]>;
  heldOut: Record<ExpertId, string[]>;
  /** Whole held-out texts per expert: stories of the topic, speeches of the play. */
  heldOutTexts: Record<ExpertId, string[]>;
}

const sentences = (s: string) => s.split(/(?<=[.!?])\s+/).filter((x) => x.length > 12);

function topicOf(text: string): Topic | undefined {
  const hits = (Object.keys(TOPICS) as Topic[]).filter((t) => TOPICS[t].test(text));
  return hits.length === 1 ? hits[0] : undefined;
}

/** The first line or two of each speech of at least 40 characters, up to 100 characters. */
function speechPrompts(text: string): string[] {
  return text
    .split(/\n\n+/)
    .filter((s) => s.length > 40)
    .map((s) => s.slice(0, 100).replace(/\s+\S*$/, ''));
}

/** Stories of one topic each, and their sentences that name it. */
function byTopic(stories: readonly string[]) {
  const out = {
    stories: { dog: [], seaside: [], royal: [] },
    prompts: { dog: [], seaside: [], royal: [] },
  } as {
    stories: Record<Topic, string[]>;
    prompts: Record<Topic, string[]>;
  };
  for (const s of stories) {
    const t = topicOf(s);
    if (!t) continue;
    out.stories[t].push(s);
    for (const sentence of sentences(s)) if (topicOf(sentence) === t) out.prompts[t].push(sentence);
  }
  return out;
}

export function expertTexts(perExpert = { examples: 40, heldOut: 100 }): ExpertTexts {
  const stories = splitStories(readFileSync(path.join(CORPORA, 'tinystories-lowercase-4MB.txt'), 'utf8'));
  const cut = Math.floor(stories.length * 0.8);
  const train = byTopic(stories.slice(0, cut));
  const held = byTopic(stories.slice(cut));
  const play = readFileSync(path.join(CORPORA, 'tinyshakespeare.txt'), 'utf8').toLowerCase();
  const split = Math.floor(play.length * 0.9);
  // Example prompts: every k-th training sentence, spread over the training stories.
  const spread = (list: string[], n: number) =>
    Array.from({ length: Math.min(n, list.length) }, (_, i) => list[Math.floor((i * list.length) / n)]);
  return {
    train: { stories: train.stories, shakespeare: play.slice(0, split) },
    examples: {
      shakespeare: spread(speechPrompts(play.slice(0, split)), perExpert.examples),
      dog: spread(train.prompts.dog, perExpert.examples),
      seaside: spread(train.prompts.seaside, perExpert.examples),
      royal: spread(train.prompts.royal, perExpert.examples),
    },
    heldOut: {
      shakespeare: speechPrompts(play.slice(split)).slice(0, perExpert.heldOut),
      dog: held.prompts.dog.slice(0, perExpert.heldOut),
      seaside: held.prompts.seaside.slice(0, perExpert.heldOut),
      royal: held.prompts.royal.slice(0, perExpert.heldOut),
    },
    heldOutTexts: {
      shakespeare: play
        .slice(split)
        .split(/\n\n+/)
        .filter((s) => s.length > 40),
      dog: held.stories.dog,
      seaside: held.stories.seaside,
      royal: held.stories.royal,
    },
  };
}

/**
 * Top-1 routing accuracy on the held-out prompts, per expert: prototypes from `examples` example
 * prompts each, embeddings from `embed` (Runtime adapters.routingEmbedding), the router as the
 * runtime's (`whiten: false` for plain cosines).
 */
export async function routingAccuracy(
  embed: (prompt: string) => Promise<Float64Array>,
  options: { examples?: number; whiten?: boolean } = {},
): Promise<Map<ExpertId, { right: number; total: number }>> {
  const texts = expertTexts({ examples: options.examples ?? 200, heldOut: 100 });
  const router = new PromptRouter({ whiten: options.whiten });
  for (const id of EXPERT_IDS) {
    const embeddings: Float64Array[] = [];
    for (const p of texts.examples[id]) embeddings.push(await embed(p));
    router.setExamples(id, embeddings);
  }
  const out = new Map<ExpertId, { right: number; total: number }>();
  for (const id of EXPERT_IDS) {
    let right = 0;
    for (const p of texts.heldOut[id]) if (router.route(await embed(p))[0].id === id) right++;
    out.set(id, { right, total: texts.heldOut[id].length });
  }
  return out;
}
