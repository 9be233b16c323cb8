/**
 * Loading a model folder into a ready LanguageModel: read and validate the files (formats/), create
 * the onnxruntime session (engine/).
 */
import { loadBackend, type BackendOptions } from './engine/backend.js';
import { DecoderSession } from './engine/decoder-session.js';
import { LanguageModel } from './engine/language-model.js';
import { urlSource, type FileSource } from './formats/files.js';
import { readModelFolder } from './formats/model-folder.js';

export type LoadModelOptions = BackendOptions;

/**
 * `source` is a FileSource, a URL (http:, https:, file: in browsers) or, in Node, a folder path.
 */
export async function loadModel(
  source: string | URL | FileSource,
  options: LoadModelOptions = {},
): Promise<LanguageModel> {
  const files = typeof source === 'object' && 'read' in source ? source : await resolveSource(source);
  const folder = await readModelFolder(files);
  const backend = await loadBackend(options);
  const session = await DecoderSession.create(backend, folder.onnx, folder.config, {
    externalData: folder.externalData,
    file: `${folder.label}/${folder.onnxFile}`,
  });
  return new LanguageModel(folder.config, folder.tokenizer, session, backend.name, folder.generation);
}

async function resolveSource(source: string | URL): Promise<FileSource> {
  const text = String(source);
  if (source instanceof URL || /^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return urlSource(source);
  const { folderSource } = await import('./formats/files-node.js');
  return folderSource(text);
}
