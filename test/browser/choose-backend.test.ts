/** The browser backend choice (engine/backend.ts chooseBackend), with WebGPU adapters stood in for. */
import { describe, expect, it } from 'vitest';
import { chooseBackend, WEBGPU_VERIFIED_OPS, type WebGpuAdapterInfo } from '../../src/engine/backend.js';

const OPS = [...WEBGPU_VERIFIED_OPS].sort();
const hardware: WebGpuAdapterInfo = {
  vendor: 'nvidia',
  architecture: 'ampere',
  description: '',
  fallback: false,
};
const swiftshader: WebGpuAdapterInfo = {
  vendor: 'google',
  architecture: 'swiftshader',
  description: '',
  fallback: false,
};
const probe = (gpu: WebGpuAdapterInfo | string) => async () => gpu;

describe('chooseBackend', () => {
  it("'auto' takes WebGPU on a hardware adapter when every op is verified", async () => {
    const r = await chooseBackend('auto', OPS, probe(hardware));
    expect(r).toMatchObject({ name: 'webgpu', requested: 'auto', gpu: hardware, unverifiedOps: [] });
    expect(r.reason).toBe(
      `WebGPU adapter nvidia ampere; all ${OPS.length} op types of the graph are verified on WebGPU`,
    );
  });

  it("'auto' stays on wasm and names the ops that are not verified on WebGPU", async () => {
    const r = await chooseBackend('auto', [...OPS, 'com.microsoft.MatMulNBits', 'Einsum'], probe(hardware));
    expect(r).toMatchObject({ name: 'wasm', unverifiedOps: ['com.microsoft.MatMulNBits', 'Einsum'] });
    expect(r.reason).toBe('the graph uses ops not verified on WebGPU: com.microsoft.MatMulNBits, Einsum');
  });

  it("'auto' stays on wasm on a software adapter or without WebGPU, and says so", async () => {
    expect((await chooseBackend('auto', OPS, probe(swiftshader))).reason).toBe(
      'the only WebGPU adapter is a software renderer (google swiftshader); wasm runs faster',
    );
    const fallback = { ...hardware, fallback: true };
    expect(await chooseBackend('auto', OPS, probe(fallback))).toMatchObject({ name: 'wasm', gpu: fallback });
    const none = 'this browser has no WebGPU (navigator.gpu is undefined)';
    expect(await chooseBackend('auto', OPS, probe(none))).toMatchObject({ name: 'wasm', reason: none });
    expect(await chooseBackend(undefined as unknown as 'auto', OPS, probe(none))).toMatchObject({
      name: 'wasm',
    });
  });

  it('a requested backend is used as asked; WebGPU without an adapter is an error', async () => {
    expect(await chooseBackend('wasm', OPS, probe(hardware))).toMatchObject({
      name: 'wasm',
      reason: 'requested',
    });
    const r = await chooseBackend('webgpu', [...OPS, 'Einsum'], probe(swiftshader));
    expect(r).toMatchObject({ name: 'webgpu', unverifiedOps: ['Einsum'] });
    expect(r.reason).toBe(
      'requested (WebGPU adapter: google swiftshader); ops not verified on WebGPU: Einsum',
    );
    await expect(chooseBackend('webgpu', OPS, probe('no adapter'))).rejects.toThrow(
      'backend "webgpu" was requested, but no adapter',
    );
  });
});
