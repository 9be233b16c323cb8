/**
 * Resolves after the event loop has run what is pending (messages: an abort, a request), unlike a
 * resolved promise. A MessageChannel round trip, so no timer clamping; a timer where there is none.
 */
export function yieldToEventLoop(): Promise<void> {
  if (typeof MessageChannel === 'undefined') return new Promise((resolve) => setTimeout(resolve, 0));
  return new Promise((resolve) => {
    const { port1, port2 } = new MessageChannel();
    port1.onmessage = () => {
      port1.close();
      resolve();
    };
    port2.postMessage(null);
  });
}
