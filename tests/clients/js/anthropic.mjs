// @anthropic-ai/sdk messages.stream: text, then a get_weather tool_use and its tool_result.
import Anthropic from '@anthropic-ai/sdk';
import { BASE, KEY, MODEL, PROMPT, TOOL_PROMPT, TOOL_OUTPUT, WEATHER, Clock, main } from './lib.mjs';

const client = new Anthropic({ baseURL: BASE, apiKey: KEY, maxRetries: 0 });
const tools = [{ name: WEATHER.name, description: WEATHER.description, input_schema: WEATHER.parameters }];

async function turn(messages) {
  const clock = new Clock();
  const stream = client.messages.stream({ model: MODEL, max_tokens: 256, messages, tools });
  let text = '';
  for await (const event of stream) {
    if (event.type !== 'content_block_delta') continue;
    clock.delta();
    if (event.delta.type === 'text_delta') text += event.delta.text;
  }
  const message = await stream.finalMessage();
  return { text, message, ...clock.end() };
}

await main(
  async () => { const { message, ...rest } = await turn([{ role: 'user', content: PROMPT }]); return rest; },
  async () => {
    const history = [{ role: 'user', content: TOOL_PROMPT }];
    const first = await turn(history);
    const uses = first.message.content.filter((b) => b.type === 'tool_use');
    history.push({ role: 'assistant', content: first.message.content });
    history.push({ role: 'user', content: uses.map((u) => ({ type: 'tool_result', tool_use_id: u.id, content: TOOL_OUTPUT })) });
    const { message, ...answer } = await turn(history);
    return { calls: uses.map((u) => ({ name: u.name, args: u.input })), ...answer };
  },
);
