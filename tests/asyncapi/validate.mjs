// Parses an AsyncAPI document with the AsyncAPI Initiative's parser (its JSON Schemas of the
// specification and its spectral rules) and prints every diagnostic as one JSON array.
// Usage: node validate.mjs DOCUMENT.json; exits 1 when any diagnostic is an error.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const text = readFileSync(process.argv[2], "utf8");
const { document, diagnostics } = await new Parser().parse(text);
const found = diagnostics.map((d) => ({ severity: d.severity, code: d.code, message: d.message, path: d.path.join("/") }));
console.log(JSON.stringify({ parsed: document !== undefined, diagnostics: found }));
process.exit(document === undefined || found.some((d) => d.severity === 0) ? 1 : 0);
