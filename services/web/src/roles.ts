/**
 * What the dashboard offers each role, mirroring the services' access rules (allocator, scraper,
 * ingest grpc.ts), so the UI never offers what the API would refuse.
 */
import { hasRole, type Principal } from "@coursemesh/shared/auth.ts";

export type Area = "monitors" | "courses" | "enrollment" | "uploads";

/** Monitors and uploads are open to any signed-in user (each sees their own; operators see all). */
export function mayUseMonitors(principal: Principal): boolean {
  return principal.roles.length > 0;
}

/** Courses are the registrar's to create and change; operators may look. */
export function mayViewCourses(principal: Principal): boolean {
  return hasRole(principal, "registrar", "operator");
}

/** CreateCourse and UpdateCourse need the registrar role. */
export function mayManageCourses(principal: Principal): boolean {
  return hasRole(principal, "registrar");
}

/** Enroll and Drop: students act as themselves; registrars for anyone. */
export function mayEnroll(principal: Principal): boolean {
  return hasRole(principal, "student", "registrar");
}

/** Registrars set a student id and a priority; a student enrolls only as themselves, priority 0. */
export function mayActForOthers(principal: Principal): boolean {
  return hasRole(principal, "registrar");
}

export function mayUpload(principal: Principal): boolean {
  return principal.roles.length > 0;
}

/** The areas a user's navigation shows, in order; the first is where signing in lands (courses for staff). */
export function areasFor(principal: Principal): Area[] {
  const areas: Area[] = [];
  if (mayViewCourses(principal)) areas.push("courses");
  if (mayEnroll(principal)) areas.push("enrollment");
  if (mayUseMonitors(principal)) areas.push("monitors");
  if (mayUpload(principal)) areas.push("uploads");
  return areas;
}
