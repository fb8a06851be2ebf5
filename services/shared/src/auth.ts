import { createRemoteJWKSet, decodeJwt, jwtVerify, SignJWT, type JWTPayload } from "jose";
import type { Config } from "./config.ts";
import { permissionDenied, unauthenticated } from "./grpc/errors.ts";

export const ROLES = ["student", "registrar", "operator", "service"] as const;
export type Role = (typeof ROLES)[number];

/** Who is calling: the token's subject and roles. */
export interface Principal {
  subject: string;
  roles: readonly Role[];
  /** The token's `email` claim, when present (a user's own address needs no confirmation). */
  email?: string;
  /** The raw bearer token, so a service can call another on the user's behalf. */
  token?: string;
}

/**
 * Who may call an RPC: `public` (no token), `authenticated` (any valid token) or a list of roles of
 * which the caller needs one. Finer rules (students only as themselves, owners) live in handlers.
 */
export type AccessRule = "public" | "authenticated" | readonly Role[];

export interface Authenticator {
  readonly disabled: boolean;
  /** Verifies an `authorization` metadata value; `null` when there is none. Throws UNAUTHENTICATED. */
  authenticate(authorization: string | undefined): Promise<Principal | null>;
}

const VERIFIED_TOKEN_CACHE_SIZE = 10_000;
const VERIFIED_TOKEN_CACHE_MS = 60_000;

const DEV_PRINCIPAL: Principal = { subject: "dev", roles: ROLES };

function principalFrom(payload: JWTPayload, token: string): Principal {
  if (typeof payload.sub !== "string" || payload.sub === "") throw unauthenticated("TOKEN_INVALID", "token has no subject (sub)");
  const rawRoles = Array.isArray(payload.roles) ? payload.roles : [];
  const roles = rawRoles.filter((r): r is Role => (ROLES as readonly unknown[]).includes(r));
  const email = typeof payload.email === "string" ? payload.email : undefined;
  return { subject: payload.sub, roles, email, token };
}

function bearerToken(authorization: string | undefined): string | null {
  if (!authorization) return null;
  const match = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
  if (!match?.[1]) throw unauthenticated("TOKEN_MALFORMED", 'authorization must be "Bearer <token>"');
  return match[1];
}

/** Builds the authenticator from AUTH_* configuration (HS256 secret or RS256 JWKS). */
export function createAuthenticator(config: Pick<Config, "AUTH_DISABLED" | "AUTH_JWT_SECRET" | "AUTH_JWKS_URL" | "AUTH_ISSUER" | "AUTH_AUDIENCE">): Authenticator {
  if (config.AUTH_DISABLED) {
    return {
      disabled: true,
      // Local development: trust the claims of any token given (to act as a student), else act as "dev" with every role.
      async authenticate(authorization) {
        const token = bearerToken(authorization);
        if (!token) return DEV_PRINCIPAL;
        try {
          return principalFrom(decodeJwt(token), token);
        } catch {
          return DEV_PRINCIPAL;
        }
      },
    };
  }
  const secret = config.AUTH_JWT_SECRET ? new TextEncoder().encode(config.AUTH_JWT_SECRET) : undefined;
  const jwks = config.AUTH_JWKS_URL ? createRemoteJWKSet(new URL(config.AUTH_JWKS_URL)) : undefined;
  const verifyOptions = { issuer: config.AUTH_ISSUER, audience: config.AUTH_AUDIENCE };

  async function verify(token: string): Promise<{ principal: Principal; expiresAtMs: number | undefined }> {
    let header: { alg?: string };
    try {
      header = JSON.parse(Buffer.from(token.split(".")[0] ?? "", "base64url").toString("utf8"));
    } catch {
      throw unauthenticated("TOKEN_MALFORMED", "bearer token is not a JWT");
    }
    try {
      let payload: JWTPayload | undefined;
      if (header.alg === "HS256" && secret) payload = (await jwtVerify(token, secret, { ...verifyOptions, algorithms: ["HS256"] })).payload;
      if (header.alg === "RS256" && jwks) payload = (await jwtVerify(token, jwks, { ...verifyOptions, algorithms: ["RS256"] })).payload;
      if (payload) return { principal: principalFrom(payload, token), expiresAtMs: payload.exp === undefined ? undefined : payload.exp * 1000 };
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "ERR_JWT_EXPIRED") throw unauthenticated("TOKEN_EXPIRED", "token has expired; get a new one");
      if ((error as { reason?: string }).reason || code?.startsWith("ERR_JWT_CLAIM")) {
        throw unauthenticated("TOKEN_INVALID", `token claim check failed: ${(error as Error).message}`);
      }
      if (error instanceof Error && "grpcCode" in error) throw error;
      throw unauthenticated("TOKEN_INVALID", "token signature is not valid");
    }
    throw unauthenticated("TOKEN_INVALID", `token algorithm ${header.alg ?? "(none)"} is not accepted here`);
  }

  // A client sends the same token on every call; verifying it once per minute (never past its
  // expiry) keeps signature checks off the hot path. Only verified tokens are remembered.
  const verified = new Map<string, { principal: Principal; validUntilMs: number }>();
  return {
    disabled: false,
    async authenticate(authorization) {
      const token = bearerToken(authorization);
      if (!token) return null;
      const now = Date.now();
      const cached = verified.get(token);
      if (cached && cached.validUntilMs > now) return cached.principal;
      verified.delete(token);
      const { principal, expiresAtMs } = await verify(token);
      if (verified.size >= VERIFIED_TOKEN_CACHE_SIZE) verified.delete(verified.keys().next().value!);
      verified.set(token, { principal, validUntilMs: Math.min(expiresAtMs ?? Infinity, now + VERIFIED_TOKEN_CACHE_MS) });
      return principal;
    },
  };
}

/** Enforces an access rule; throws UNAUTHENTICATED or PERMISSION_DENIED with a message a person can act on. */
export function authorize(rule: AccessRule, principal: Principal | null, method: string): void {
  if (rule === "public") return;
  if (!principal) throw unauthenticated("TOKEN_MISSING", `${method} needs a bearer token in the authorization metadata`);
  if (rule === "authenticated") return;
  if (!rule.some((role) => principal.roles.includes(role))) {
    throw permissionDenied(
      "ROLE_REQUIRED",
      `${method} needs one of the roles ${rule.join(", ")}; the token has ${principal.roles.join(", ") || "none"}`,
    );
  }
}

/** Whether the principal has any of `roles`. */
export function hasRole(principal: Principal | null, ...roles: Role[]): boolean {
  return Boolean(principal && roles.some((role) => principal.roles.includes(role)));
}

export interface MintOptions {
  subject: string;
  roles: readonly Role[];
  email?: string;
  secret: string;
  expiresIn?: string;
  issuer?: string;
  audience?: string;
}

/** Signs an HS256 token, for the dev command, service-to-service calls and tests. */
export async function mintToken(options: MintOptions): Promise<string> {
  let jwt = new SignJWT({ roles: options.roles, ...(options.email ? { email: options.email } : {}) })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(options.subject)
    .setIssuedAt()
    .setExpirationTime(options.expiresIn ?? "12h");
  if (options.issuer) jwt = jwt.setIssuer(options.issuer);
  if (options.audience) jwt = jwt.setAudience(options.audience);
  return jwt.sign(new TextEncoder().encode(options.secret));
}
