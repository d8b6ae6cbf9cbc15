// Checks a facegate event signature (events.sign_key_*) in Node.js or a
// Node-RED function node, without re-encoding JSON: the signature covers the
// payload's exact bytes before its last member, ,"sig":"<64 hex>"}.
//
//   const { verifyEvent } = require("./verify_event.js");
//   const event = verifyEvent(payloadBuffer, keyBuffer); // throws when refused
//
// Then act only on event.delivery === "live", event.clock_synced === true,
// Date.now() / 1000 <= event.expires_at_unix and a seq newer than the last one.
"use strict";
const crypto = require("crypto");

const SUFFIX = /,"sig":"([0-9a-f]{64})"\}$/;
const CONTEXT = Buffer.from("facegate-event-v1\n");

function verifyEvent(payload, key) {
  let data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, "utf8");
  if (data.length && data[data.length - 1] === 0x0a) data = data.subarray(0, -1);
  // The suffix is ASCII, so matching it on a latin1 view finds the same bytes.
  const m = SUFFIX.exec(data.toString("latin1"));
  if (!m) throw new Error("unsigned: no \"sig\" member at the end of the payload");
  const body = Buffer.concat([data.subarray(0, m.index), Buffer.from("}")]);
  const want = crypto.createHmac("sha256", key).update(CONTEXT).update(body).digest();
  const got = Buffer.from(m[1], "hex");
  if (!crypto.timingSafeEqual(want, got)) {
    throw new Error("bad signature: not signed with this key, or altered");
  }
  const event = JSON.parse(body.toString("utf8")); // parse the signed body, never the rest
  if (event === null || typeof event !== "object" || Array.isArray(event) || "sig" in event) {
    throw new Error("signed body is not one event object");
  }
  return event;
}

module.exports = { verifyEvent };

// As a command: node verify_event.js KEYFILE < payloads (one per line);
// prints each verified event, and why each other line was refused.
if (require.main === module) {
  const fs = require("fs");
  const key = fs.readFileSync(process.argv[2]).toString("latin1").replace(/[\r\n]+$/, "");
  const lines = fs.readFileSync(0).toString("latin1").split("\n").filter((l) => l.length);
  let refused = 0;
  for (const line of lines) {
    try {
      console.log(JSON.stringify(verifyEvent(Buffer.from(line, "latin1"), Buffer.from(key, "latin1"))));
    } catch (e) {
      refused += 1;
      console.error(`refused: ${e.message}`);
    }
  }
  process.exitCode = refused ? 1 : 0;
}
