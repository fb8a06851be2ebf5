/**
 * Mints a development token: `bun run token --role registrar --sub alice [--role student] [--email a@x] [--ttl 12h]`.
 * Signed with AUTH_JWT_SECRET, else the secret `bun run dev` uses.
 */
import { parseArgs } from "node:util";
import { mintToken, ROLES, type Role } from "../auth.ts";
import { devJwtSecret } from "./secret.ts";

const { values } = parseArgs({
  options: {
    role: { type: "string", multiple: true, default: [] },
    sub: { type: "string" },
    email: { type: "string" },
    ttl: { type: "string", default: "12h" },
    help: { type: "boolean", short: "h" },
  },
});

const usage = `usage: bun run token --role <${ROLES.join("|")}> [--role …] --sub <subject> [--email <address>] [--ttl 12h]`;
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const roles = values.role as string[];
const unknown = roles.filter((r) => !(ROLES as readonly string[]).includes(r));
if (!values.sub || roles.length === 0 || unknown.length > 0) {
  console.error(unknown.length ? `unknown role(s): ${unknown.join(", ")}\n${usage}` : usage);
  process.exit(2);
}
console.log(await mintToken({ subject: values.sub, roles: roles as Role[], email: values.email, secret: devJwtSecret(), expiresIn: values.ttl }));
