// Shared by the client scripts: the gateway from the environment, the weather tool, a delta clock,
// and one JSON result line on stdout ({"text": case, "tool": case} or {"error": message}).
import { performance } from 'node:perf_hooks';

export const BASE = process.env.RELAY_BASE_URL; // http://127.0.0.1:PORT, no path
export const KEY = process.env.RELAY_KEY;
export const MODEL = process.env.RELAY_MODEL;
export const MARKER = process.env.RELAY_TOOL_MARKER;
export const TOOL_OUTPUT = JSON.stringify({ temp_c: 18, note: MARKER });
export const PROMPT = process.env.RELAY_PROMPT;
export const TOOL_PROMPT = process.env.RELAY_TOOL_PROMPT;
export const WEATHER = {
  name: 'get_weather',
  description: 'Weather for a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

const RELEASE = process.env.RELAY_RELEASE_URL;
const released = [];

// One streamed response: its first delta tells the fake upstream to release its held finish event
// (RELAY_RELEASE_URL), and is timed, as is the end (ms, one clock).
export class Clock {
  constructor() { this.first = null; this.deltas = 0; }
  delta() {
    this.deltas += 1;
    if (this.first !== null) return;
    this.first = performance.now();
    if (RELEASE) released.push(fetch(RELEASE).then((r) => r.text()));
  }
  end() { this.last = performance.now(); return { first_delta_ms: this.first, end_ms: this.last, deltas: this.deltas }; }
}

export async function main(textCase, toolCase) {
  try {
    const out = {};
    for (const [name, run] of [['text', textCase], ['tool', toolCase]]) {
      try { out[name] = await run(); } catch (err) { out[name] = { error: String(err?.stack ?? err) }; process.exitCode = 1; }
    }
    await Promise.allSettled(released);
    process.stdout.write(JSON.stringify(out) + '\n');
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err?.stack ?? err) }) + '\n');
    process.exitCode = 1;
  }
}
