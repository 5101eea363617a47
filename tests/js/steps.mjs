// What the scripts here share: each step's result goes into `out.steps[name]` (a thrown error as
// its stack), and a Better Auth client answer is summarised as {data, error}.
export const summary = ({ data, error }) => ({
  data,
  error: error ? { status: error.status, code: error.code ?? null, message: error.message ?? null } : null,
});

export const stepsInto = (out) => async (name, fn) => {
  try {
    out.steps[name] = await fn();
  } catch (e) {
    out.steps[name] = { thrown: String(e?.stack ?? e) };
  }
};
