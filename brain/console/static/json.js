// JSON shown exactly as the server sent it. JSON.parse loses what a person may care about in
// their own data: 1.0 becomes 1, 12345678901234567890 is rounded, and keys such as "2" and
// "10" are moved in front of the others. So the page keeps the source text of every member
// (parseExact) and pretty-prints that text by re-indenting its tokens (pretty): values,
// key order, duplicate keys and escapes stay as they were.

const SPACE = /[ \t\n\r]*/y;
const STRING = /"[^"\\]*(?:\\.[^"\\]*)*"/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const LITERAL = /true|false|null/y;
const TOKEN = /[ \t\n\r]*("[^"\\]*(?:\\.[^"\\]*)*"|[{}[\],:]|[^ \t\n\r{}[\],:"]+)/y;
const members = new WeakMap(); // parsed object or array -> Map(key or index -> source text of its value)

/** JSON.parse, remembering the source text of each object member and array element (sourceOf). */
export function parseExact(text) {
  let at = 0;
  const fail = () => { throw new SyntaxError(`bad JSON at ${at}`); };
  const skip = () => { SPACE.lastIndex = at; SPACE.exec(text); at = SPACE.lastIndex; };
  const take = (pattern) => {
    pattern.lastIndex = at;
    const found = pattern.exec(text);
    if (!found) fail();
    at = pattern.lastIndex;
    return found[0];
  };
  const expect = (char) => { skip(); if (text[at] !== char) fail(); at += 1; };
  function value() {
    skip();
    const char = text[at];
    if (char === "{") {
      at += 1;
      const object = {};
      const sources = new Map();
      members.set(object, sources);
      skip();
      if (text[at] === "}") { at += 1; return object; }
      for (;;) {
        skip();
        const key = JSON.parse(take(STRING));
        expect(":");
        skip();
        const start = at;
        // defineProperty: a "__proto__" key is data, as JSON.parse makes it.
        Object.defineProperty(object, key, { value: value(), enumerable: true, writable: true, configurable: true });
        sources.set(key, text.slice(start, at));
        skip();
        if (text[at] === ",") { at += 1; continue; }
        expect("}");
        return object;
      }
    }
    if (char === "[") {
      at += 1;
      const array = [];
      const sources = new Map();
      members.set(array, sources);
      skip();
      if (text[at] === "]") { at += 1; return array; }
      for (;;) {
        skip();
        const start = at;
        array.push(value());
        sources.set(array.length - 1, text.slice(start, at));
        skip();
        if (text[at] === ",") { at += 1; continue; }
        expect("]");
        return array;
      }
    }
    if (char === '"') return JSON.parse(take(STRING));
    if (char === "t" || char === "f" || char === "n") return JSON.parse(take(LITERAL));
    return Number(take(NUMBER));
  }
  const parsed = value();
  skip();
  if (at !== text.length) fail();
  return parsed;
}

/** The source text of `object[key]` (or `array[index]`) as parseExact read it (JSON.stringify's
 * if it did not). */
export function sourceOf(object, key) {
  const source = members.get(object)?.get(key);
  return source === undefined ? JSON.stringify(object[key]) : source;
}

/** JSON source text, re-indented: its tokens as they are, two spaces a level. */
export function pretty(source) {
  let out = "";
  let depth = 0;
  let at = 0;
  const next = () => {
    TOKEN.lastIndex = at;
    const found = TOKEN.exec(source);
    return found ? [found[1], TOKEN.lastIndex] : [null, at];
  };
  const line = () => "\n" + "  ".repeat(depth);
  for (;;) {
    const [token, end] = next();
    if (token === null) break;
    at = end;
    if (token === "{" || token === "[") {
      const [following, after] = next();
      if (following === (token === "{" ? "}" : "]")) {
        out += token + following;
        at = after;
      } else {
        depth += 1;
        out += token + line();
      }
    } else if (token === "}" || token === "]") {
      depth -= 1;
      out += line() + token;
    } else if (token === ",") {
      out += "," + line();
    } else if (token === ":") {
      out += ": ";
    } else {
      out += token;
    }
  }
  return out;
}
