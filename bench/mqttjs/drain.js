// MQTT.js draining a pre-loaded persistent session (bench/baselines.py runs it).
// argv: port client_id qos count mode ("count": count only; "fields": JSON.parse + the 12 fields)
// Prints one JSON line: {"seconds": ..., "received": ...}, timed from connect to the last message.
"use strict";
const mqtt = require("mqtt");
const [port, clientId, qos, count, mode] = process.argv.slice(2);
const target = Number(count);
let received = 0;
let fields = 0;
const t0 = process.hrtime.bigint();
const client = mqtt.connect({
  host: "127.0.0.1",
  port: Number(port),
  clientId,
  clean: false,
  protocolVersion: 4,
  keepalive: 60,
  reconnectPeriod: 0,
});
function done() {
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(JSON.stringify({ seconds, received, fields }) + "\n");
  client.end(true, () => process.exit(0));
}
const timer = setTimeout(done, Number(process.env.KOM_BENCH_TIMEOUT || 120) * 1000);
client.on("message", (topic, payload) => {
  if (mode === "fields") {
    const d = JSON.parse(payload);
    const a = d.Agent, g = d.GlobalMeasure, o = d.Outputs;
    const out = [
      new Date(a.Time), a.Uptime, g.Voltage, g.Frequency, g.TotalCurrent,
      g.OverallPowerFactor, g.TotalLoad, g.TotalEnergy, o[0].State === 1, o[0].Load,
      o[1].State === 1, o[1].Load,
    ];
    fields += out.length;
  }
  received += 1;
  if (received === target) {
    clearTimeout(timer);
    done();
  }
});
client.on("error", (err) => {
  process.stderr.write(String(err) + "\n");
  process.exit(1);
});
