// Drives the built-in web client in Debian's Chromium (playwright-core, no
// downloaded browser). Started by tests/web_client.rs, which owns the server:
//
//   node web_client.mjs <base-url> <artifact-dir>
//
// Talks to the Rust side in lines: it prints `phase <name>` when it needs the
// Rust side to act, and waits for a line on stdin before going on. Prints
// `done` and exits 0 on success; on failure it prints the reason to stderr
// and exits 1. Every wait has a timeout; nothing sleeps to synchronize.
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join as joinPath } from "node:path";
import { chromium } from "playwright-core";

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error("usage: node web_client.mjs <base-url> <artifact-dir>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const WAIT_MS = 20000;
const CHANNEL = "lobby";

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function phase(name) {
  console.log(`phase ${name}`);
  const next = await stdinLines.next();
  if (next.done) throw new Error(`stdin closed while waiting after phase ${name}`);
  return next.value;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: WAIT_MS,
});

const problems = [];

async function openPage(name, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on("console", (m) => {
    // A reconnect attempt while the server restarts fails by design.
    if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) {
      problems.push(`${name}: console error: ${m.text()}`);
    }
  });
  const res = await page.goto(base);
  if (!res || res.status() !== 200) throw new Error(`${name}: GET / answered ${res && res.status()}`);
  return page;
}

// Joins, then lets the Rust side confirm (through its own member of the
// channel) that the server has taken the join in, so the channel's order is
// known for what follows.
async function join(page, uid) {
  await page.getByLabel("Your name", { exact: true }).fill(uid);
  await page.getByLabel("Channel", { exact: true }).fill(CHANNEL);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await page.waitForSelector('body[data-state="connected"]');
  await phase(`joined ${uid}`);
}

async function send(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByRole("button", { name: "Send", exact: true }).click();
}

// Waits until the page's log holds an entry with exactly this text (and,
// when given, this kind: join, mine, msg, raw, note).
async function sees(page, text, kind) {
  await page.waitForFunction(
    ([t, k]) =>
      [...document.querySelectorAll("#log li")].some(
        (li) => li.querySelector(".text").textContent === t && (!k || li.className === k),
      ),
    [text, kind],
    { timeout: WAIT_MS },
  );
}

// The log as {kind, who, text} entries.
async function entriesOf(page) {
  return page.$$eval("#log li", (lis) =>
    lis.map((li) => ({
      kind: li.className,
      who: li.querySelector(".who")?.textContent ?? "",
      text: li.querySelector(".text").textContent,
    })),
  );
}

async function logOf(page) {
  return (await entriesOf(page)).map((e) => e.text);
}

function count(log, text) {
  return log.filter((t) => t === text).length;
}

function assertOrder(log, expected, what) {
  let at = -1;
  for (const e of expected) {
    const i = log.indexOf(e, at + 1);
    if (i < 0) throw new Error(`${what}: "${e}" missing or out of order in ${JSON.stringify(log)}`);
    at = i;
  }
}

try {
  // Two members chat live.
  const alice = await openPage("alice", { width: 1024, height: 720 });
  const bob = await openPage("bob", { width: 1024, height: 720 });
  await join(alice, "alice");
  await join(bob, "bob");
  await sees(alice, "bob joined", "join");
  await sees(bob, "alice joined", "join");
  await send(alice, "hello from alice");
  await sees(alice, "hello from alice", "mine");
  // The sender's name travels with the page's own messages.
  await sees(bob, "hello from alice", "msg");
  const fromAlice = (await entriesOf(bob)).find((e) => e.text === "hello from alice");
  if (fromAlice.who !== "alice") throw new Error(`bob sees the sender as ${fromAlice.who}`);
  await send(bob, "hi alice");
  await sees(alice, "hi alice", "msg");

  // A late member gets the history, in the channel's order.
  const carol = await openPage("carol", { width: 390, height: 844 });
  await join(carol, "carol");
  await sees(carol, "hi alice");
  assertOrder(
    await logOf(carol),
    ["robot joined", "alice joined", "bob joined", "hello from alice", "hi alice"],
    "carol's history",
  );
  // Nobody announces a departure, so there is no member list to go stale.
  if (await carol.$("#members")) throw new Error("a member list is shown");
  await sees(alice, "carol joined", "join");

  // The Rust client sends a raw frame, a header for another channel and an
  // envelope with a name that never joined.
  await phase("chatted");
  for (const p of [alice, bob, carol]) {
    await sees(p, "beep from robot", "raw");
    await sees(p, '{"uid":"admin","channel":"room2"}', "raw");
    await sees(p, "trust me", "msg");
    const log = await entriesOf(p);
    if (log.some((e) => e.text === "admin joined")) throw new Error("a forged join was shown");
    const forged = log.find((e) => e.text === "trust me");
    if (forged.who !== "malloryname not seen joining") {
      throw new Error(`the unknown name is not marked: ${forged.who}`);
    }
  }
  // Someone else using alice's name is not "You" on alice's page.
  await sees(alice, "fake alice", "msg");
  const fake = (await entriesOf(alice)).find((e) => e.text === "fake alice");
  if (fake.who !== "alicenot sent from this page") throw new Error(`alice sees ${fake.who}`);
  await sees(bob, "fake alice", "msg");
  // A second "alice" is refused while the first one is alive (the server
  // probes her, she answers), and the page says so instead of retrying.
  const impostor = await openPage("impostor", { width: 390, height: 844 });
  await impostor.getByLabel("Your name", { exact: true }).fill("alice");
  await impostor.getByLabel("Channel", { exact: true }).fill(CHANNEL);
  await impostor.getByRole("button", { name: "Join", exact: true }).click();
  await impostor.waitForSelector('body[data-state="closed"]');
  const refusal = await impostor.locator("#status").textContent();
  if (!refusal.includes("(1008)")) throw new Error(`impostor's status: ${refusal}`);
  await impostor.context().close();

  // Alice leaves and joins again: the history comes again, and the view
  // neither loses her messages' authorship nor repeats anything.
  await alice.getByRole("button", { name: "Leave", exact: true }).click();
  await alice.waitForSelector('body[data-state="idle"]');
  await alice.getByRole("button", { name: "Join", exact: true }).click();
  await alice.waitForSelector('body[data-state="connected"][data-joins="2"]');
  await send(bob, "welcome back");
  await sees(alice, "welcome back", "msg");
  let log = await logOf(alice);
  for (const t of ["hello from alice", "hi alice", "bob joined", "beep from robot", "trust me", "fake alice"]) {
    if (count(log, t) !== 1) throw new Error(`"${t}" shown ${count(log, t)} times after a rejoin: ${JSON.stringify(log)}`);
  }
  await sees(alice, "hello from alice", "mine");

  await carol.screenshot({ path: joinPath(artifacts, "web_client_phone.png"), fullPage: true });
  await alice.screenshot({ path: joinPath(artifacts, "web_client_desktop.png") });

  // The server restarts (its history is gone): every page reconnects by
  // itself, keeps what it showed, and chats again.
  await phase("restart");
  await alice.waitForSelector('body[data-state="connected"][data-joins="3"]');
  for (const p of [bob, carol]) {
    await p.waitForSelector('body[data-state="connected"][data-joins="2"]');
  }
  await sees(alice, "hello from alice", "mine");
  await sees(carol, "hi alice", "msg");
  await sees(alice, "bob joined");
  await send(alice, "after restart");
  await sees(bob, "after restart", "msg");
  await sees(carol, "after restart", "msg");
  log = await logOf(bob);
  if (count(log, "hello from alice") !== 1) throw new Error(`bob's view after the restart: ${JSON.stringify(log)}`);
  await bob.screenshot({ path: joinPath(artifacts, "web_client_restart.png") });

  if (problems.length) throw new Error(problems.join("\n"));
  console.log("done");
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`browser test failed: ${e.stack || e}`);
  for (const p of problems) console.error(p);
  await browser.close().catch(() => {});
  process.exit(1);
}
