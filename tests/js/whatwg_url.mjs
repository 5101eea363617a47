// How a browser reads URLs: node's WHATWG `URL`, the parser the URL Standard specifies.
// stdin: {"base": "...", "inputs": ["...", ...]}; stdout: one entry per input,
// {"href", "origin", "host"} as `new URL(input, base)` gives them, or {"error"} if it refuses.
let text = "";
for await (const chunk of process.stdin) text += chunk;
const { base, inputs } = JSON.parse(text);
const out = inputs.map((input) => {
  try {
    const url = new URL(input, base);
    return { href: url.href, origin: url.origin, host: url.host };
  } catch (err) {
    return { error: String(err.code || err.message) };
  }
});
process.stdout.write(JSON.stringify(out));
