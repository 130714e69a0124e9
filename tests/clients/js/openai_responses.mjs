// openai (Node) Responses API, streamed: text, then a get_weather call and its function_call_output.
import OpenAI from 'openai';
import { BASE, KEY, MODEL, PROMPT, TOOL_PROMPT, TOOL_OUTPUT, WEATHER, Clock, main } from './lib.mjs';

const client = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY, maxRetries: 0 });
const tools = [{ type: 'function', ...WEATHER }];

async function turn(input) {
  const clock = new Clock();
  const stream = await client.responses.create({ model: MODEL, input, tools, stream: true });
  let text = '';
  let final = null;
  for await (const event of stream) {
    if (event.type === 'response.output_text.delta') { clock.delta(); text += event.delta; }
    if (event.type === 'response.function_call_arguments.delta') clock.delta();
    if (event.type === 'response.completed') final = event.response;
  }
  const calls = (final?.output ?? []).filter((o) => o.type === 'function_call');
  return { text, final_text: final?.output_text ?? null, output: final?.output ?? [], calls, ...clock.end() };
}

await main(
  async () => { const { output, calls, ...rest } = await turn(PROMPT); return rest; },
  async () => {
    const first = await turn(TOOL_PROMPT);
    const input = [{ role: 'user', content: TOOL_PROMPT }, ...first.output];
    for (const c of first.calls) input.push({ type: 'function_call_output', call_id: c.call_id, output: TOOL_OUTPUT });
    const { output, calls, ...answer } = await turn(input);
    return { calls: first.calls.map((c) => ({ name: c.name, args: JSON.parse(c.arguments) })), ...answer };
  },
);
