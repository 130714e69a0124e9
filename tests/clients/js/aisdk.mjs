// Vercel AI SDK streamText through one provider (RELAY_AISDK: openai = Responses, its default, with
// store: false as a stateless gateway needs; openai-stored = the same with the SDK's default
// store: true, which sends item references after the first step; openai-chat = .chat();
// anthropic; google): text, then a get_weather tool the SDK runs itself.
import { jsonSchema, stepCountIs, streamText, tool } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import { createGoogleGenerativeAI } from '@ai-sdk/google';
import { BASE, KEY, MODEL, PROMPT, TOOL_PROMPT, TOOL_OUTPUT, WEATHER, Clock, main } from './lib.mjs';

const providers = {
  openai: () => createOpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY })(MODEL),
  'openai-stored': () => createOpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY })(MODEL),
  'openai-chat': () => createOpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY }).chat(MODEL),
  anthropic: () => createAnthropic({ baseURL: `${BASE}/v1`, apiKey: KEY })(MODEL),
  google: () => createGoogleGenerativeAI({ baseURL: `${BASE}/v1beta`, apiKey: KEY })(MODEL),
};
const model = providers[process.env.RELAY_AISDK]();
const providerOptions = process.env.RELAY_AISDK === 'openai' ? { openai: { store: false } } : undefined;
globalThis.AI_SDK_LOG_WARNINGS = false;
const tools = {
  get_weather: tool({
    description: WEATHER.description,
    inputSchema: jsonSchema(WEATHER.parameters),
    execute: async () => TOOL_OUTPUT,
  }),
};

// One streamText call; the steps' texts and the calls, with the clock on the last step.
async function run(prompt) {
  const result = streamText({ model, prompt, tools, providerOptions, stopWhen: stepCountIs(3), maxRetries: 0 });
  const steps = [''];
  const calls = [];
  let clock = new Clock();
  for await (const part of result.fullStream) {
    if (part.type === 'error') throw part.error;
    if (part.type === 'text-delta') { clock.delta(); steps[steps.length - 1] += part.text; }
    if (part.type === 'tool-call') calls.push({ name: part.toolName, args: part.input });
    if (part.type === 'finish-step' && calls.length && steps.length === 1) { steps.push(''); clock = new Clock(); }
  }
  return { text: steps[steps.length - 1], steps, calls, ...clock.end() };
}

await main(() => run(PROMPT), () => run(TOOL_PROMPT));
