// The benchmark's Node reference: Redis pub/sub → every `ws` client (no auth, no filters).
// `node bench/ws_relay.js PORT REDIS_URL CHANNEL`; `just bench gateway` installs `ws` and
// `redis` into a temporary folder (NODE_PATH) — nothing of it is committed.
const { WebSocketServer } = require("ws");
const { createClient } = require("redis");

const [port, redisUrl, channel] = process.argv.slice(2);
const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(port), perMessageDeflate: false, backlog: 4096 });
const sub = createClient({ url: redisUrl });

sub.connect().then(async () => {
  await sub.subscribe(channel, (message) => {
    // the live channel carries `event\nmeta`: clients get the event only
    const nl = message.indexOf("\n");
    const event = nl < 0 ? message : message.slice(0, nl);
    for (const client of wss.clients) client.send(event, { binary: false });
  });
  console.log("ready");
});
process.on("SIGTERM", () => { wss.close(); sub.quit().finally(() => process.exit(0)); });
