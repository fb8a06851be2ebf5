/**
 * The scraper's part of `bun run dev`: serve the demo registrar, watch "CMPUT 201 LEC A1" on it
 * through the scraper's gRPC API, open a seat, and show the scraper seeing the change.
 */
import { MonitorServiceClient } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { mintToken } from "@coursemesh/shared/auth.ts";
import { SERVICE_PORTS } from "@coursemesh/shared/config.ts";
import { createClient, unary } from "@coursemesh/shared/grpc/client.ts";
import { startRegistrar, type Registrar } from "./demo/registrar.ts";
import type { Seats } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";

const DEMO_PORT = Number(process.env.DEMO_REGISTRAR_PORT ?? 8090);

function describeSeats(seats: Seats | undefined): string {
  if (!seats) return "no reading yet";
  const counts = [seats.open !== undefined ? `open ${seats.open}` : "", seats.capacity !== undefined ? `capacity ${seats.capacity}` : "", seats.waitlist !== undefined ? `waitlist ${seats.waitlist}` : ""].filter(Boolean).join(", ");
  return `"${seats.raw}" (${counts || seats.parseError})`;
}

function startDemoRegistrar(): Registrar {
  try {
    return startRegistrar({ port: DEMO_PORT });
  } catch {
    // Port taken (another dev session?): any free port works, the monitor is told the URL.
    return startRegistrar({ port: 0 });
  }
}

/** Runs the demo against the scraper on its local port; the registrar keeps serving while dev runs. */
export async function runDemo({ secret, say }: { secret: string; say: (line: string) => void }): Promise<void> {
  const registrar = startDemoRegistrar();
  const page = `${registrar.url}/pages/fall-2026`;
  say(`scraper demo: a BearTracks-like registrar at ${page} (seats are rendered by JavaScript after 0.8 s)`);
  const token = await mintToken({ subject: "student-1", roles: ["student"], email: "student-1@example.edu", secret });
  const client = createClient(MonitorServiceClient, `127.0.0.1:${SERVICE_PORTS.scraper.grpc}`, { caller: "dev", defaultDeadlineMs: 60_000 });
  try {
    const { monitor } = await unary(
      client.createMonitor.bind(client),
      {
        url: page,
        label: "CMPUT 201 LEC A1",
        intervalSeconds: 0,
        notifyEmails: [],
        extractor: { kind: { $case: "beartracks", value: { courseCode: "CMPUT 201", sectionLabel: "LEC A1" } } },
        fetchMode: 0,
        isolation: 0,
      },
      { token },
    );
    say(`created monitor ${monitor!.id} for "CMPUT 201 LEC A1" (every ${monitor!.intervalSeconds} s, headless Chromium)`);
    const first = await unary(client.checkNow.bind(client), { id: monitor!.id }, { token });
    say(`first check: ${describeSeats(first.monitor!.seats)}`);

    registrar.setSeats("fall-2026", "CMPUT 201", "LEC A1", { open: 3, capacity: 30, waitlist: 0 });
    say("the registrar opened 3 seats in CMPUT 201 LEC A1; checking again …");
    const second = await unary(client.checkNow.bind(client), { id: monitor!.id }, { token });
    say(`second check: ${describeSeats(second.monitor!.seats)} — ${second.changed ? "a seat change, published as seats.changed" : "no change seen"}`);
    const history = await unary(client.listSeatChanges.bind(client), { monitorId: monitor!.id, pageSize: 10, pageToken: "" }, { token });
    for (const change of history.seatChanges) say(`  history: ${change.previous ? describeSeats(change.previous) : "(first reading)"} → ${describeSeats(change.current)}`);
    say(`change seats yourself: curl -X POST ${registrar.url}/admin/pages/fall-2026/seats -d '{"course":"CMPUT 201","section":"LEC A1","open":5,"capacity":30}'`);
  } catch (error) {
    say(`scraper demo failed: ${(error as Error).message}`);
  } finally {
    client.close();
  }
}
