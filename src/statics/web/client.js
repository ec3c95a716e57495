// The built-in Mles chat client: join a channel, see its history and live
// messages, send messages, reconnect with back-off without losing the view.
//
// Protocol (docs/PROTOCOL.md): the first frame is the JSON header
// {"uid":..,"channel":..}; the server relays other members' headers (joins)
// and replays the channel's history, then relays live frames. Frames carry
// no sender, so this page sends its messages in a small envelope,
//   {"mles.chat":1,"from":"<uid>","text":"<message>"}
// (docs/PROTOCOL.md, "The built-in page's envelope"), and shows:
// - joins: JSON objects with string uid and channel naming this channel
//   (a header for another channel is never relayed here, so it is a
//   forgery and shown as a raw frame);
// - envelopes with their claimed author, marked when that name was never
//   seen joining; "You" only for frames this page sent itself;
// - anything else as a raw frame of unknown sender.
// Nobody is told when a member leaves, so the page keeps no member list.
"use strict";

(() => {
  const SUBPROTOCOL = "mles-websocket";
  // Back-off between reconnects: doubles from 1 s up to 30 s, with jitter so
  // that clients dropped together do not return together.
  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // A connection that stayed up this long resets the back-off.
  const STABLE_MS = 10000;
  // Close codes after which retrying cannot help (our header or frames are wrong).
  const FATAL = new Set([1002, 1007, 1009]);
  // After a reconnect the history comes again; it has no end marker, so a
  // pause this long after the last frame ends the comparison with what is
  // already on screen.
  const REPLAY_QUIET_MS = 500;
  const ENVELOPE = "mles.chat";

  const $ = (id) => document.getElementById(id);
  const ui = {
    joinForm: $("join-form"),
    uid: $("uid"),
    channel: $("channel"),
    join: $("join"),
    leave: $("leave"),
    status: $("status"),
    log: $("log"),
    sendForm: $("send-form"),
    message: $("message"),
    send: $("send"),
  };

  const state = {
    ws: null,
    uid: "",
    channel: "",
    // True while the user wants to be in the channel (reconnect on drops).
    wanted: false,
    // True after the first connection of this join has ended.
    rejoining: false,
    attempt: 0,
    timer: 0,
    openedAt: 0,
    // Connections opened so far (also on <body data-joins>, for tests).
    joins: 0,
    // Every frame of the channel shown so far, as received or sent, in the
    // channel's order: what a replayed history is compared with.
    frames: [],
    // Uids seen in join headers of this channel.
    joined: new Set(),
    // While a reconnect's history arrives: which frames it repeats.
    replay: null,
    // The frames this page sent: only these are shown as "You".
    sent: new Set(),
  };

  function serverUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/`;
  }

  function setState(name, text) {
    document.body.dataset.state = name;
    ui.status.textContent = text;
    const connected = name === "connected";
    ui.message.disabled = !connected;
    ui.send.disabled = !connected;
    const inChannel = state.wanted;
    ui.uid.disabled = inChannel;
    ui.channel.disabled = inChannel;
    ui.join.hidden = inChannel;
    ui.leave.hidden = !inChannel;
  }

  // One log entry: an optional author line (with a mark), then the text.
  function append(kind, text, who, mark) {
    const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    const li = document.createElement("li");
    li.className = kind;
    if (who) {
      const span = document.createElement("span");
      span.className = "who";
      span.textContent = who;
      if (mark) {
        const m = document.createElement("span");
        m.className = "mark";
        m.textContent = mark;
        span.append(m);
      }
      li.append(span);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(body);
    ui.log.append(li);
    if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function parseObject(text) {
    if (!text.startsWith("{")) return null;
    try {
      const v = JSON.parse(text);
      return v && typeof v === "object" && !Array.isArray(v) ? v : null;
    } catch (_) {
      return null;
    }
  }

  // What a text frame is: a join of this channel, one of our envelopes, or raw.
  function classify(text) {
    const v = parseObject(text);
    if (v && typeof v.uid === "string" && typeof v.channel === "string") {
      return v.channel === state.channel && v.uid !== ""
        ? { kind: "join", uid: v.uid }
        : { kind: "raw" };
    }
    if (v && v[ENVELOPE] === 1 && typeof v.from === "string" && typeof v.text === "string") {
      return { kind: "chat", from: v.from, text: v.text };
    }
    return { kind: "raw" };
  }

  function show(data) {
    if (typeof data !== "string") {
      append("raw", `[binary frame, ${data.byteLength} bytes]`, "Raw frame · sender unknown");
      return;
    }
    state.frames.push(data);
    const f = classify(data);
    if (f.kind === "join") {
      state.joined.add(f.uid);
      append("join", `${f.uid} joined`);
    } else if (f.kind === "chat") {
      if (state.sent.has(data)) {
        append("mine", f.text, "You");
      } else if (f.from === state.uid) {
        // Our name, but not a frame this page sent: someone else wrote it.
        append("msg", f.text, f.from, "not sent from this page");
      } else {
        const mark = state.joined.has(f.from) ? "" : "name not seen joining";
        append("msg", f.text, f.from, mark);
      }
    } else {
      append("raw", data, "Raw frame · sender unknown");
    }
  }

  // During a replay, frames that repeat the tail of what is on screen are
  // held back; once the repeat is complete they are dropped, and on the
  // first frame that does not fit, whatever was held is shown after all.
  function receive(data) {
    // Our own join header comes back in the history of a rejoin; where it
    // sits among the other frames is not known, so it takes no part in
    // the comparison and is not shown (the page notes each join itself).
    if (typeof data === "string") {
      const f = classify(data);
      if (f.kind === "join" && f.uid === state.uid) return;
    }
    const r = state.replay;
    if (!r || typeof data !== "string") {
      show(data);
      return;
    }
    clearTimeout(r.timer);
    r.timer = setTimeout(endReplay, REPLAY_QUIET_MS);
    const starts = r.starts === null ? r.old.map((_, i) => i) : r.starts;
    const going = starts.filter((i) => i + r.k < r.old.length && r.old[i + r.k] === data);
    if (going.length > 0) {
      r.starts = going;
      r.k += 1;
      r.held.push(data);
      return;
    }
    const complete = r.starts !== null && r.starts.some((i) => i + r.k === r.old.length);
    state.replay = null;
    clearTimeout(r.timer);
    if (!complete) r.held.forEach(show);
    show(data);
  }

  // The history went quiet: a repeat that reached the end of the screen is
  // dropped, anything else held is new after all (the server restarted).
  function endReplay() {
    const r = state.replay;
    if (!r) return;
    state.replay = null;
    const complete = r.starts !== null && r.starts.some((i) => i + r.k === r.old.length);
    if (!complete) r.held.forEach(show);
  }

  function connect() {
    clearTimeout(state.timer);
    setState("connecting", `Connecting to ${state.channel}…`);
    let ws;
    try {
      ws = new WebSocket(serverUrl(), SUBPROTOCOL);
    } catch (e) {
      scheduleReconnect(`Cannot connect: ${e.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => {
      if (state.ws !== ws) return;
      state.openedAt = Date.now();
      state.joins += 1;
      document.body.dataset.joins = String(state.joins);
      // The history comes again with every join: keep the view and compare
      // the replay with it instead of starting afresh.
      if (state.frames.length > 0) {
        append("note", state.rejoining ? "Reconnected." : "Joined again.");
        state.replay = {
          old: state.frames.slice(),
          starts: null,
          k: 0,
          held: [],
          timer: setTimeout(endReplay, REPLAY_QUIET_MS),
        };
      }
      ws.send(JSON.stringify({ uid: state.uid, channel: state.channel }));
      if (state.joins === 1) append("note", `You joined ${state.channel} as ${state.uid}.`);
      setState("connected", `Joined ${state.channel} as ${state.uid}.`);
      // Focus the message box after a join, not when a reconnect happens
      // while the user is elsewhere on the page.
      if (document.activeElement === document.body) ui.message.focus();
    };
    ws.onmessage = (ev) => {
      if (state.ws === ws) receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      endReplay();
      if (!state.wanted) return;
      const why = ev.reason ? `${ev.reason} (${ev.code})` : `code ${ev.code}`;
      // 1008 on the first connection of a join is a refusal (name taken,
      // auth, size) that retrying cannot fix; on a rejoin it may be our own
      // half-open earlier connection, which the server probes and drops.
      if (FATAL.has(ev.code) || (ev.code === 1008 && !state.rejoining)) {
        state.wanted = false;
        setState("closed", `The server closed the connection: ${why}.`);
        return;
      }
      state.rejoining = true;
      if (state.openedAt && Date.now() - state.openedAt >= STABLE_MS) state.attempt = 0;
      state.openedAt = 0;
      scheduleReconnect(`Connection lost: ${why}.`);
    };
    // An error is always followed by a close event, which handles it.
    ws.onerror = () => {};
  }

  function scheduleReconnect(why) {
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
    state.attempt += 1;
    setState("waiting", `${why} Reconnecting in ${Math.ceil(delay / 1000)} s…`);
    state.timer = setTimeout(connect, delay);
  }

  function leave() {
    state.wanted = false;
    clearTimeout(state.timer);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, "left");
    setState("idle", "Not connected.");
  }

  ui.joinForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const uid = ui.uid.value.trim();
    const channel = ui.channel.value.trim();
    if (!uid || !channel) return;
    if (uid !== state.uid || channel !== state.channel) {
      // Another name or channel: another conversation.
      ui.log.replaceChildren();
      state.frames = [];
      state.joined.clear();
      state.sent.clear();
    }
    state.uid = uid;
    state.channel = channel;
    state.wanted = true;
    state.rejoining = false;
    state.attempt = 0;
    try {
      localStorage.setItem("mles.uid", uid);
      localStorage.setItem("mles.channel", channel);
    } catch (_) {
      // Storage may be off (private mode); remembering is only a convenience.
    }
    connect();
  });

  ui.leave.addEventListener("click", leave);

  ui.sendForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.message.value;
    const ws = state.ws;
    if (!text.trim() || !ws || ws.readyState !== WebSocket.OPEN) return;
    const frame = JSON.stringify({ [ENVELOPE]: 1, from: state.uid, text });
    ws.send(frame);
    state.sent.add(frame);
    // The server never echoes a frame back to its sender; it is part of the
    // channel's history all the same.
    show(frame);
    ui.message.value = "";
    ui.message.focus();
  });

  // Back online: do not wait out the back-off.
  window.addEventListener("online", () => {
    if (state.wanted && !state.ws) connect();
  });

  try {
    ui.uid.value = localStorage.getItem("mles.uid") || "";
    ui.channel.value = localStorage.getItem("mles.channel") || "";
  } catch (_) {
    // See above.
  }
  setState("idle", "Not connected.");
})();
