// The Python a user would paste to make the same chat request with the official openai package.
// JSON string literals are valid Python string literals, so JSON.stringify quotes safely.

const py = (value) => JSON.stringify(value);

export function pythonSnippet({ baseUrl, model, messages, temperature, topP, maxTokens }) {
  const lines = [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(api_key=os.environ["TESSERA_TOKEN"], base_url=${py(baseUrl)})`,
    "stream = client.chat.completions.create(",
    `    model=${py(model)},`,
    "    messages=[",
    ...messages.map((m) => `        {"role": ${py(m.role)}, "content": ${py(m.content)}},`),
    "    ],",
    `    temperature=${temperature},`,
    `    top_p=${topP},`,
    `    max_tokens=${maxTokens},`,
    "    stream=True,",
    ")",
    "for chunk in stream:",
    "    if chunk.choices and chunk.choices[0].delta.content:",
    '        print(chunk.choices[0].delta.content, end="", flush=True)',
    "print()",
  ];
  return lines.join("\n");
}
