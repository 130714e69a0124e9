// @google/genai generateContentStream: text, then a get_weather functionCall and its functionResponse.
import { GoogleGenAI } from '@google/genai';
import { BASE, KEY, MODEL, PROMPT, TOOL_PROMPT, TOOL_OUTPUT, WEATHER, Clock, main } from './lib.mjs';

const client = new GoogleGenAI({ apiKey: KEY, httpOptions: { baseUrl: BASE } });
const config = { tools: [{ functionDeclarations: [WEATHER] }] };

async function turn(contents) {
  const clock = new Clock();
  let text = '';
  const parts = [];
  for await (const chunk of await client.models.generateContentStream({ model: MODEL, contents, config })) {
    clock.delta();
    for (const part of chunk.candidates?.[0]?.content?.parts ?? []) {
      parts.push(part);
      if (part.text) text += part.text;
    }
  }
  return { text, parts, ...clock.end() };
}

await main(
  async () => { const { parts, ...rest } = await turn([{ role: 'user', parts: [{ text: PROMPT }] }]); return rest; },
  async () => {
    const history = [{ role: 'user', parts: [{ text: TOOL_PROMPT }] }];
    const first = await turn(history);
    const calls = first.parts.filter((p) => p.functionCall).map((p) => p.functionCall);
    history.push({ role: 'model', parts: first.parts });
    history.push({
      role: 'user',
      parts: calls.map((c) => ({ functionResponse: { id: c.id, name: c.name, response: { output: TOOL_OUTPUT } } })),
    });
    const { parts, ...answer } = await turn(history);
    return { calls: calls.map((c) => ({ name: c.name, args: c.args })), ...answer };
  },
);
