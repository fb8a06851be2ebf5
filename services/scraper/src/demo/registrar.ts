/**
 * A demo registrar: BearTracks-like schedule pages (`.course_box`, `.course_title`,
 * `strong.type_block`, `.seatText`) whose sections and seats are rendered by JavaScript after a
 * fixed delay, like the real thing. An admin API sets seats and makes a page fail (HTTP 500), hang,
 * or drop its seat elements. The Quick start, the tests and the benchmark use it; run it alone with
 * `bun run services/scraper/src/demo/registrar.ts` (DEMO_REGISTRAR_HOST, DEMO_REGISTRAR_PORT,
 * DEMO_RENDER_DELAY_MS).
 *
 * Routes (every page name works; a new one starts from the sample term):
 *   GET  /pages/<page>                 the schedule, seats rendered by JavaScript after the delay
 *   GET  /pages/<page>?render=server   the same with the seats in the HTML (for fetch_mode=HTTP)
 *   GET  /api/pages/<page>             the schedule as JSON (for the json extractor)
 *   POST /admin/pages/<page>/seats     {course, section, open?, capacity?, waitlist?, text?}
 *   POST /admin/pages/<page>/fault     {mode: "none" | "error" | "hang" | "drop"}
 *   GET  /admin/hits                   [{page, at}] page loads so far (?page= filters); DELETE clears
 */

/** One section's seats; `text` overrides what the page prints. */
export interface DemoSeats {
  open: number;
  capacity: number;
  waitlist: number;
  text?: string;
}

interface DemoSection {
  label: string;
  classNumber: number;
  schedule: string;
  seats: DemoSeats;
}

interface DemoCourse {
  code: string;
  title: string;
  sections: DemoSection[];
}

/** How a page misbehaves: answer 500, never answer, or render without its seat elements. */
export type FaultMode = "none" | "error" | "hang" | "drop";

interface DemoPage {
  courses: DemoCourse[];
  fault: FaultMode;
}

function sampleCourses(): DemoCourse[] {
  return [
    {
      code: "CMPUT 201",
      title: "Practical Programming Methodology",
      sections: [
        { label: "LEC A1", classNumber: 40121, schedule: "MWF 10:00 - 10:50", seats: { open: 0, capacity: 30, waitlist: 4 } },
        { label: "LEC A2", classNumber: 40122, schedule: "TR 14:00 - 15:20", seats: { open: 7, capacity: 30, waitlist: 0 } },
        { label: "LAB D01", classNumber: 40131, schedule: "M 14:00 - 16:50", seats: { open: 2, capacity: 24, waitlist: 0 } },
      ],
    },
    {
      code: "CMPUT 204",
      title: "Algorithms I",
      sections: [{ label: "LEC B1", classNumber: 40211, schedule: "TR 09:30 - 10:50", seats: { open: 12, capacity: 120, waitlist: 0 } }],
    },
    {
      code: "MATH 125",
      title: "Linear Algebra I",
      sections: [{ label: "LEC A1", classNumber: 41501, schedule: "MWF 09:00 - 09:50", seats: { open: 31, capacity: 150, waitlist: 0 } }],
    },
  ];
}

/** The seat text the page prints, BearTracks style. */
export function seatText(seats: DemoSeats): string {
  if (seats.text !== undefined) return seats.text;
  const base = seats.open > 0 ? `${seats.open} of ${seats.capacity} seats open` : "Full";
  return seats.waitlist > 0 ? `${base}, Waitlist: ${seats.waitlist}` : base;
}

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function sectionsHtml(course: DemoCourse, drop: boolean): string {
  return course.sections
    .map(
      (s) => `<tr class="section_row"><td><strong class="type_block">${escapeHtml(s.label)}</strong> (${s.classNumber})</td><td>${escapeHtml(s.schedule)}</td>` +
        `<td class="seats">${drop ? "" : `<span class="seatText">${escapeHtml(seatText(s.seats))}</span>`}</td></tr>`,
    )
    .join("");
}

function coursesHtml(page: DemoPage): string {
  return page.courses
    .map((c) => `<div class="course_box"><div class="course_title">${escapeHtml(c.code)} - ${escapeHtml(c.title)}</div><table class="sections">${sectionsHtml(c, page.fault === "drop")}</table></div>`)
    .join("");
}

function pageHtml(name: string, page: DemoPage, renderDelayMs: number, serverRendered: boolean): string {
  const head = `<!doctype html><html><head><meta charset="utf-8"><title>Class Search — ${escapeHtml(name)}</title>
<style>body{font-family:sans-serif;margin:2em}.course_box{border:1px solid #ccc;margin:1em 0;padding:.5em}.course_title{font-weight:bold}.seatText{color:#064}</style></head>
<body><h1>Class Search: ${escapeHtml(name)}</h1><div id="results">`;
  if (serverRendered) return `${head}${coursesHtml(page)}</div></body></html>`;
  // The data travels inside the page and is rendered after a fixed delay, as a single-page app does.
  const data = JSON.stringify({ courses: page.courses.map((c) => ({ ...c, sections: c.sections.map((s) => ({ ...s, text: seatText(s.seats) })) })), drop: page.fault === "drop" });
  return `${head}<p class="loading">Loading classes…</p></div>
<script>
const data = ${data.replace(/</g, "\\u003c")};
setTimeout(() => {
  const results = document.getElementById("results");
  results.textContent = "";
  for (const course of data.courses) {
    const box = document.createElement("div");
    box.className = "course_box";
    const title = document.createElement("div");
    title.className = "course_title";
    title.textContent = course.code + " - " + course.title;
    box.appendChild(title);
    const table = document.createElement("table");
    for (const section of course.sections) {
      const row = table.insertRow();
      const label = document.createElement("strong");
      label.className = "type_block";
      label.textContent = section.label;
      const cell = row.insertCell();
      cell.appendChild(label);
      cell.append(" (" + section.classNumber + ")");
      row.insertCell().textContent = section.schedule;
      const seats = row.insertCell();
      if (!data.drop) {
        const text = document.createElement("span");
        text.className = "seatText";
        text.textContent = section.text;
        seats.appendChild(text);
      }
    }
    box.appendChild(table);
    results.appendChild(box);
  }
}, ${renderDelayMs});
</script></body></html>`;
}

export interface RegistrarOptions {
  /** Addresses to listen on (loopback only), e.g. ["127.0.0.1"] or 127.0.0.x aliases. */
  hosts?: string[];
  /** 0 picks a free port (the same one on every host when possible). */
  port?: number;
  renderDelayMs?: number;
}

export interface Registrar {
  /** Base URL per host, e.g. http://127.0.0.1:8090. */
  urls: string[];
  url: string;
  port: number;
  setSeats(page: string, course: string, section: string, seats: Partial<DemoSeats>): DemoSeats;
  setFault(page: string, mode: FaultMode): void;
  /** Page loads so far (schedule pages and JSON), oldest first. */
  hits(page?: string): { page: string; path: string; at: number }[];
  clearHits(): void;
  stop(): Promise<void>;
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1|localhost)$/;

/** Starts the demo registrar on loopback addresses. */
export function startRegistrar(options: RegistrarOptions = {}): Registrar {
  const hosts = options.hosts ?? ["127.0.0.1"];
  for (const host of hosts) if (!LOOPBACK.test(host)) throw new Error(`the demo registrar listens on loopback only, not ${host}`);
  const renderDelayMs = options.renderDelayMs ?? 800;
  const pages = new Map<string, DemoPage>();
  const hitLog: { page: string; path: string; at: number }[] = [];
  const hanging = new Set<() => void>();

  const pageNamed = (name: string): DemoPage => {
    let page = pages.get(name);
    if (!page) {
      page = { courses: sampleCourses(), fault: "none" };
      pages.set(name, page);
    }
    return page;
  };

  const findSection = (page: DemoPage, course: string, section: string): DemoSection => {
    const c = page.courses.find((x) => x.code.toLowerCase() === course.toLowerCase());
    if (!c) throw new Error(`no course ${course}`);
    const s = c.sections.find((x) => x.label.toLowerCase() === section.toLowerCase());
    if (!s) throw new Error(`no section ${section} in ${course}`);
    return s;
  };

  const registrar: Omit<Registrar, "urls" | "url" | "port" | "stop"> = {
    setSeats(name, course, section, seats) {
      const target = findSection(pageNamed(name), course, section);
      target.seats = { ...target.seats, ...seats };
      if (seats.text === undefined && (seats.open !== undefined || seats.capacity !== undefined || seats.waitlist !== undefined)) delete target.seats.text;
      return target.seats;
    },
    setFault(name, mode) {
      pageNamed(name).fault = mode;
      if (mode !== "hang") for (const release of hanging) release();
    },
    hits: (page) => (page ? hitLog.filter((h) => h.page === page) : [...hitLog]),
    clearHits: () => void hitLog.splice(0),
  };

  async function handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    if (request.method === "GET" && parts.length === 0) {
      const links = [...new Set(["fall-2026", ...pages.keys()])].map((p) => `<li><a href="/pages/${encodeURIComponent(p)}">${escapeHtml(p)}</a></li>`).join("");
      return new Response(`<!doctype html><h1>Demo registrar</h1><ul>${links}</ul>`, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    if (request.method === "GET" && (parts[0] === "pages" || (parts[0] === "api" && parts[1] === "pages"))) {
      const name = parts[0] === "pages" ? parts[1] : parts[2];
      if (!name) return new Response("not found", { status: 404 });
      const page = pageNamed(name);
      hitLog.push({ page: name, path: url.pathname + url.search, at: Date.now() });
      if (hitLog.length > 200_000) hitLog.splice(0, 100_000);
      if (page.fault === "error") return new Response("Internal Server Error", { status: 500 });
      if (page.fault === "hang") {
        // Answer only when the fault is lifted or the registrar stops; the client gives up first.
        await new Promise<void>((resolve) => {
          const release = () => {
            hanging.delete(release);
            resolve();
          };
          hanging.add(release);
          request.signal.addEventListener("abort", release);
        });
        return new Response("too late", { status: 503 });
      }
      if (parts[0] === "api") {
        return Response.json({
          page: name,
          courses: page.courses.map((c) => ({
            code: c.code,
            title: c.title,
            sections: c.sections.map((s) => ({ label: s.label, seats: page.fault === "drop" ? null : { ...s.seats, text: seatText(s.seats) } })),
          })),
        });
      }
      return new Response(pageHtml(name, page, renderDelayMs, url.searchParams.get("render") === "server"), {
        headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
      });
    }
    if (parts[0] === "admin") {
      try {
        if (request.method === "POST" && parts[1] === "pages" && parts[2] && parts[3] === "seats") {
          const body = (await request.json()) as { course: string; section: string } & Partial<DemoSeats>;
          const { course, section, ...seats } = body;
          return Response.json(registrar.setSeats(parts[2], course, section, seats));
        }
        if (request.method === "POST" && parts[1] === "pages" && parts[2] && parts[3] === "fault") {
          const { mode } = (await request.json()) as { mode: FaultMode };
          if (!["none", "error", "hang", "drop"].includes(mode)) return Response.json({ error: "mode must be none, error, hang or drop" }, { status: 400 });
          registrar.setFault(parts[2], mode);
          return Response.json({ page: parts[2], fault: mode });
        }
        if (parts[1] === "hits" && request.method === "GET") return Response.json(registrar.hits(url.searchParams.get("page") ?? undefined));
        if (parts[1] === "hits" && request.method === "DELETE") {
          registrar.clearHits();
          return Response.json({ cleared: true });
        }
      } catch (error) {
        return Response.json({ error: (error as Error).message }, { status: 400 });
      }
    }
    return new Response("not found", { status: 404 });
  }

  const servers: ReturnType<typeof Bun.serve>[] = [];
  let port = options.port ?? 0;
  for (const host of hosts) {
    const server = Bun.serve({ hostname: host, port, fetch: handle, idleTimeout: 60 });
    servers.push(server);
    // The other aliases share the first one's port, so URLs differ by host only.
    port = server.port!;
  }
  const urls = hosts.map((host) => `http://${host.includes(":") ? `[${host}]` : host}:${port}`);
  return {
    ...registrar,
    urls,
    url: urls[0]!,
    port,
    async stop() {
      for (const release of hanging) release();
      await Promise.all(servers.map((s) => s.stop(true)));
    },
  };
}

if (import.meta.main) {
  const registrar = startRegistrar({
    hosts: [process.env.DEMO_REGISTRAR_HOST ?? "127.0.0.1"],
    port: Number(process.env.DEMO_REGISTRAR_PORT ?? 8090),
    renderDelayMs: Number(process.env.DEMO_RENDER_DELAY_MS ?? 800),
  });
  console.log(`demo registrar on ${registrar.url} — try ${registrar.url}/pages/fall-2026`);
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => void registrar.stop().then(() => process.exit(0)));
}
