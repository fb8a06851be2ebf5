/** The one page layout: header with role-aware navigation, main content, scripts. */
import type { Principal } from "@coursemesh/shared/auth.ts";
import { html, type Html } from "./html.ts";
import { areasFor, type Area } from "./roles.ts";
import { CSRF_FIELD } from "./session.ts";
import { assetVersion } from "./static.ts";

const AREA_LABELS: Record<Area, string> = { monitors: "Monitors", courses: "Courses", enrollment: "Enrollment", uploads: "Uploads" };

/** Asset URLs carry a hash of the assets, so they can be cached for a long time and every replica agrees. */
export const ASSET_VERSION = assetVersion();

export interface PageOptions {
  title: string;
  /** The signed-in user; absent on the sign-in page. */
  principal?: Principal;
  csrf?: string;
  current?: Area;
  body: Html;
}

/** A whole page. */
export function page(options: PageOptions): Html {
  const { principal } = options;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${options.title} · coursemesh</title>
<link rel="stylesheet" href="/static/app.css?v=${ASSET_VERSION}">
<script src="/static/app.js?v=${ASSET_VERSION}" defer></script>
</head>
<body${options.csrf ? html` data-csrf="${options.csrf}"` : ""}>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
  <a class="brand" href="/">coursemesh</a>
  ${
    principal
      ? html`<nav aria-label="Main"><ul>${areasFor(principal).map(
          (area) => html`<li><a href="/${area}"${options.current === area ? html` aria-current="page"` : ""}>${AREA_LABELS[area]}</a></li>`,
        )}</ul></nav>
  <form class="signout" method="post" action="/signout">
    <input type="hidden" name="${CSRF_FIELD}" value="${options.csrf ?? ""}">
    <span class="who">${principal.subject} <small>(${principal.roles.join(", ") || "no roles"})</small></span>
    <button type="submit" class="link">Sign out</button>
  </form>`
      : ""
  }
</header>
<main id="main" tabindex="-1">
${options.body}
</main>
</body>
</html>
`;
}

/** A page of one of the signed-in areas. */
export function areaPage(ctx: { principal: Principal; csrf: string }, area: Area, title: string, body: Html): Html {
  return page({ title, principal: ctx.principal, csrf: ctx.csrf, current: area, body });
}
