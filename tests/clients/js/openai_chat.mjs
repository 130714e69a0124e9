// openai (Node) Chat Completions, streamed: text, then a get_weather call and its result.
import OpenAI from 'openai';
import { BASE, KEY, MODEL, PROMPT, TOOL_PROMPT, TOOL_OUTPUT, WEATHER, Clock, main } from './lib.mjs';

const client = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY, maxRetries: 0 });
const tools = [{ type: 'function', function: WEATHER }];

async function turn(messages) {
  const clock = new Clock();
  const stream = await client.chat.completions.create({
    model: MODEL, messages, tools, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  const calls = [];
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta;
    if (!delta) continue;
    if (delta.content) { clock.delta(); text += delta.content; }
    for (const tc of delta.tool_calls ?? []) {
      clock.delta();
      const call = (calls[tc.index] ??= { id: '', name: '', arguments: '' });
      if (tc.id) call.id = tc.id;
      if (tc.function?.name) call.name += tc.function.name;
      if (tc.function?.arguments) call.arguments += tc.function.arguments;
    }
  }
  return { text, calls, ...clock.end() };
}

await main(
  () => turn([{ role: 'user', content: PROMPT }]),
  async () => {
    const history = [{ role: 'user', content: TOOL_PROMPT }];
    const first = await turn(history);
    history.push({
      role: 'assistant', content: first.text || null,
      tool_calls: first.calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } })),
    });
    for (const c of first.calls) history.push({ role: 'tool', tool_call_id: c.id, content: TOOL_OUTPUT });
    const answer = await turn(history);
    return { ...answer, calls: first.calls.map((c) => ({ name: c.name, args: JSON.parse(c.arguments) })) };
  },
);
