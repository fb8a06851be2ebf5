/**
 * The allocator's part of `bun run dev`: a registrar opens a two-seat course, four students ask for
 * it at once (one of them boosted by the registrar), one drops, and the waitlist head moves up —
 * all through gRPC on the allocator's local port.
 */
import {
  CreateCourseRequest,
  DropRequest,
  EnrollmentServiceClient,
  EnrollmentStatus,
  EnrollRequest,
  ListWaitlistRequest,
  type EnrollResponse,
} from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import { mintToken } from "@coursemesh/shared/auth.ts";
import { SERVICE_PORTS } from "@coursemesh/shared/config.ts";
import { createClient, unary } from "@coursemesh/shared/grpc/client.ts";

const ADDRESS = `127.0.0.1:${SERVICE_PORTS.allocator.grpc}`;

function outcome(answer: EnrollResponse): string {
  const status = EnrollmentStatus[answer.status].replace("ENROLLMENT_STATUS_", "");
  return `${answer.studentId.padEnd(10)} ${status.padEnd(10)} ${answer.message}`;
}

/** Runs the demo against the allocator on its local port. */
export async function runDemo({ secret, say }: { secret: string; say: (line: string) => void }): Promise<void> {
  const registrar = await mintToken({ subject: "registrar-1", roles: ["registrar"], secret });
  const client = createClient(EnrollmentServiceClient, ADDRESS, { caller: "dev", defaultDeadlineMs: 10_000 });
  try {
    // The dev database is kept between runs; a fresh code keeps each run's course empty.
    const code = `CMPUT 201 LEC D${Date.now() % 100_000}`;
    const { course } = await unary(
      client.createCourse.bind(client),
      CreateCourseRequest.fromPartial({ code, title: "Practical Programming Methodology", capacity: 2 }),
      { token: registrar },
    );
    say(`allocator: registrar-1 created ${course!.code} with 2 seats (${course!.id})`);

    const students = ["student-1", "student-2", "student-3", "student-4"];
    const answers = await Promise.all(
      students.map(async (studentId) => {
        // student-3's request comes from the registrar with priority 50: 500 ms ahead in the queue.
        const boosted = studentId === "student-3";
        const token = boosted ? registrar : await mintToken({ subject: studentId, roles: ["student"], secret });
        return unary(
          client.enroll.bind(client),
          EnrollRequest.fromPartial({ idempotencyKey: crypto.randomUUID(), studentId, courseId: course!.id, priority: boosted ? 50 : 0, wait: true }),
          { token },
        );
      }),
    );
    say("allocator: four students asked at once (Enroll with wait=true); the decisions:");
    for (const answer of answers) console.log(`  ${outcome(answer)}`);

    const holder = answers.find((a) => a.status === EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED && a.studentId !== "student-3");
    if (holder) {
      const token = await mintToken({ subject: holder.studentId, roles: ["student"], secret });
      const dropped = await unary(
        client.drop.bind(client),
        DropRequest.fromPartial({ studentId: holder.studentId, courseId: course!.id, idempotencyKey: crypto.randomUUID() }),
        { token },
      );
      say(`allocator: ${holder.studentId} dropped; ${dropped.promotedStudentId || "nobody"} got the seat in the same transaction`);
    }
    const { entries } = await unary(client.listWaitlist.bind(client), ListWaitlistRequest.fromPartial({ courseId: course!.id }), { token: registrar });
    say(`allocator: waitlist now: ${entries.map((e) => `${e.waitlistPosition}. ${e.studentId}`).join(", ") || "empty"}`);
    say("allocator: try it yourself (run the Enroll twice: the same key answers with the same request) —");
    console.log(
      [
        `  grpcurl -plaintext -H "authorization: Bearer $(bun run --silent token --role student --sub student-9)" \\`,
        `    -d '{"idempotency_key":"student-9-first-try","student_id":"student-9","course_id":"${course!.id}","wait":true}' \\`,
        `    ${ADDRESS} coursemesh.allocator.v1.EnrollmentService/Enroll`,
        `  grpcurl -plaintext -H "authorization: Bearer $(bun run --silent token --role registrar --sub registrar-1)" \\`,
        `    -d '{"course_id":"${course!.id}"}' ${ADDRESS} coursemesh.allocator.v1.EnrollmentService/ListWaitlist`,
      ].join("\n"),
    );
  } catch (error) {
    say(`allocator: demo failed: ${(error as Error).message}`);
  } finally {
    client.close();
  }
}
