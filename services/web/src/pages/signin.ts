/** The sign-in page: paste a token from `bun run token` (or any JWT the deployment trusts). */
import { html, type Html } from "../html.ts";
import { page } from "../layout.ts";

/** The sign-in form, with a message when a token was refused or a session ended. */
export function signInPage(options: { error?: string; notice?: string } = {}): Html {
  return page({
    title: "Sign in",
    body: html`<section class="card narrow">
  <h1>Sign in</h1>
  ${options.notice ? html`<p class="notice" role="status">${options.notice}</p>` : ""}
  <form method="post" action="/signin" class="stack">
    <div class="field">
      <label for="token">Access token</label>
      <textarea id="token" name="token" rows="4" required autocomplete="off" spellcheck="false"
        aria-describedby="token-help${options.error ? " token-error" : ""}"${options.error ? html` aria-invalid="true"` : ""}></textarea>
      <p id="token-help" class="help">Paste a token from your identity provider, or for local development run <code>bun run token --role student --sub alice</code>.</p>
      ${options.error ? html`<p id="token-error" class="error" role="alert">${options.error}</p>` : ""}
    </div>
    <button type="submit">Sign in</button>
  </form>
</section>`,
  });
}
