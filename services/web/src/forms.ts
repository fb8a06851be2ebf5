/** Form fields with their label, help and the service's error next to them, and form outcomes. */
import type { RouteContext } from "./app.ts";
import type { WebError } from "./errors.ts";
import { html, type Html } from "./html.ts";
import { htmlResponse, redirect, wantsJson } from "./respond.ts";
import { CSRF_FIELD } from "./session.ts";

/** What a form shows after a refused submission: the values typed and the service's messages. */
export interface FormState {
  values: Record<string, string>;
  error?: WebError;
}

export interface FieldOptions {
  /** Form (and id) prefix, so several forms on one page keep unique ids. */
  form: string;
  name: string;
  label: string;
  state?: FormState;
  type?: "text" | "url" | "number" | "email" | "textarea" | "select";
  value?: string;
  help?: string;
  required?: boolean;
  wide?: boolean;
  options?: { value: string; label: string }[];
  attrs?: Html;
}

/** A labelled field; its error (from the service) sits right under it and is tied to it by aria-describedby. */
export function field(options: FieldOptions): Html {
  const id = `${options.form}-${options.name}`;
  const error = options.state?.error?.fields[options.name];
  const value = options.state?.values[options.name] ?? options.value ?? "";
  const describedBy = [options.help ? `${id}-help` : "", `${id}-error`].filter(Boolean).join(" ");
  const common = html`id="${id}" name="${options.name}" aria-describedby="${describedBy}"${options.required ? html` required` : ""}${
    error ? html` aria-invalid="true"` : ""
  } ${options.attrs ?? ""}`;
  let control: Html;
  if (options.type === "textarea") control = html`<textarea ${common} rows="2">${value}</textarea>`;
  else if (options.type === "select") {
    control = html`<select ${common}>${(options.options ?? []).map(
      (o) => html`<option value="${o.value}"${o.value === value ? html` selected` : ""}>${o.label}</option>`,
    )}</select>`;
  } else control = html`<input ${common} type="${options.type ?? "text"}" value="${value}">`;
  return html`<div class="field${options.wide ? " wide" : ""}">
  <label for="${id}">${options.label}</label>
  ${control}
  ${options.help ? html`<p id="${id}-help" class="help">${options.help}</p>` : ""}
  <p id="${id}-error" class="error" data-error-for="${options.name}">${error ?? ""}</p>
</div>`;
}

/** The hidden CSRF field every form carries. */
export function csrfField(csrf: string): Html {
  return html`<input type="hidden" name="${CSRF_FIELD}" value="${csrf}">`;
}

/** The form-level message: the service's own words for the whole refusal. */
export function formMessage(state: FormState | undefined): Html {
  return html`<p class="error" role="alert" data-form-error>${state?.error?.message ?? ""}</p>`;
}

/** The values of a form post as strings (files are not values). */
export function formValues(ctx: RouteContext): Record<string, string> {
  const values: Record<string, string> = {};
  for (const [key, value] of ctx.form?.entries() ?? []) if (typeof value === "string" && key !== CSRF_FIELD) values[key] = value;
  return values;
}

/**
 * A refused form: JSON for the page's script ({error, fields}), or the page again with the values
 * and the messages next to their fields for a browser without it.
 */
export function refused(ctx: RouteContext, error: WebError, rerender: (state: FormState) => Promise<Html> | Html): Promise<Response> | Response {
  const headers: Record<string, string> = error.retryAfterMs ? { "retry-after": String(Math.ceil(error.retryAfterMs / 1000)) } : {};
  if (wantsJson(ctx.request)) return Response.json({ error: error.message, reason: error.reason, fields: error.fields }, { status: error.status, headers });
  return Promise.resolve(rerender({ values: formValues(ctx), error })).then((body) => htmlResponse(body, { status: error.status, headers }));
}

/** A done form: JSON for the script (with whatever it needs to update the page), else back to `location`. */
export function done(ctx: RouteContext, location: string, data: Record<string, unknown> = {}): Response {
  if (wantsJson(ctx.request)) return Response.json({ ok: true, ...data });
  return redirect(location);
}
