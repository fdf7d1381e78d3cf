/**
 * The config-ssh block: marker handling on malformed files (the file must
 * stay byte-identical), and ProxyCommand quoting checked with the real
 * OpenSSH client and the real shells it runs ProxyCommand with.
 */
import { execa } from 'execa'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, lstat, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { newCliUser, runCli, type CliUser } from '../test/harness.ts'
import { tryCommand } from './commands/config-ssh.ts'
import {
  BLOCK_END,
  BLOCK_START,
  findBlock,
  proxyCommandWord,
  removeBlock,
  renderBlock,
  replaceBlock,
} from './ssh-config.ts'

const USER_BEFORE = 'Host before\n  HostName before.example.test\n'
const USER_AFTER = 'Host mine\n  HostName keep-me.example.test\n'
const OLD = `${BLOCK_START}\nHost coder-mesh.*\n  ProxyCommand /old/coder-mesh ssh --stdio %h\n${BLOCK_END}\n`
const BLOCK = renderBlock({ binary: '/opt/coder-mesh', workspaces: ['dev'] })

describe('config-ssh block markers', () => {
  it('should append a block to a file that has none, keeping the user entries', () => {
    const out = replaceBlock(USER_BEFORE, 'cfg', BLOCK)
    expect(out.startsWith(USER_BEFORE)).toBe(true)
    expect(out).toContain(`${BLOCK_START}\n${BLOCK.join('\n')}\n${BLOCK_END}\n`)
    expect(replaceBlock('', 'cfg', BLOCK)).toBe(
      `${[BLOCK_START, ...BLOCK, BLOCK_END].join('\n')}\n`,
    )
  })

  it('should replace the block in place and leave what is around it', () => {
    const out = replaceBlock(USER_BEFORE + OLD + USER_AFTER, 'cfg', BLOCK)
    expect(out).toBe(
      `${USER_BEFORE}${[BLOCK_START, ...BLOCK, BLOCK_END].join('\n')}\n${USER_AFTER}`,
    )
    // Running again changes nothing.
    expect(replaceBlock(out, 'cfg', BLOCK)).toBe(out)
  })

  it('should take CRLF and trailing-space markers as markers, never adding a second block', () => {
    const crlf = (USER_BEFORE + OLD + USER_AFTER).replace(/\n/g, '\r\n')
    const out = replaceBlock(crlf, 'cfg', BLOCK)
    expect(out.split(BLOCK_START)).toHaveLength(2)
    expect(out).not.toContain('/old/coder-mesh')
    expect(out.endsWith(USER_AFTER.replace(/\n/g, '\r\n'))).toBe(true)

    const spaced = USER_BEFORE + OLD.replace(BLOCK_START, `${BLOCK_START}  `) + USER_AFTER
    const out2 = replaceBlock(spaced, 'cfg', BLOCK)
    expect(out2.split(BLOCK_START)).toHaveLength(2)
    expect(out2).not.toContain('/old/coder-mesh')
  })

  const malformed: [string, string, RegExp][] = [
    [
      'two starts, one end',
      `${USER_BEFORE}${BLOCK_START}\nHost coder-mesh.*\n${USER_AFTER}${OLD}`,
      /2 start markers \(line 3, 7\), 1 end marker \(line 10\)/,
    ],
    ['end before start', `${BLOCK_END}\n${USER_AFTER}${BLOCK_START}\n`, /end marker comes before/],
    ['a start with no end', `${USER_BEFORE}${BLOCK_START}\n${USER_AFTER}`, /1 start marker.*0 end/],
    ['an end with no start', `${USER_BEFORE}${BLOCK_END}\n${USER_AFTER}`, /0 start markers, 1 end/],
  ]
  for (const [what, text, message] of malformed) {
    it(`should refuse a file with ${what}, naming the problem`, () => {
      expect(() => replaceBlock(text, '/home/a/.ssh/config', BLOCK)).toThrow(message)
      expect(() => findBlock(text, 'cfg')).toThrow(/MESH_SSH_CONFIG_MALFORMED|malformed/)
      expect(() => removeBlock(text, 'cfg')).toThrow(/malformed/)
    })
  }

  it('should give back the user lines byte for byte: invalid UTF-8, mixed endings', () => {
    const user = Buffer.from('Host a\n  User \xff\xfeb\xe9\r\nHost b\r\n', 'latin1')
    const text = user.toString('latin1')
    const block = renderBlock({ binary: '/opt/é/coder-mesh', workspaces: ['dev'] })
    const out = Buffer.from(replaceBlock(text, 'cfg', block), 'latin1')
    expect(out.subarray(0, user.length).equals(user)).toBe(true)
    // The block's own non-ASCII text is UTF-8.
    expect(out.includes(Buffer.from('/opt/é/coder-mesh', 'utf8'))).toBe(true)
    const removed = Buffer.from(removeBlock(out.toString('latin1'), 'cfg'), 'latin1')
    expect(removed.equals(user)).toBe(true)
  })

  it('should take indented markers as markers', () => {
    const text = USER_BEFORE + OLD.replace(BLOCK_START, `  ${BLOCK_START}`) + USER_AFTER
    const out = replaceBlock(text, 'cfg', BLOCK)
    expect(out.split(BLOCK_START)).toHaveLength(2)
    expect(out).not.toContain('/old/coder-mesh')
  })

  it('should leave the file as it was after an add and a remove', () => {
    const added = replaceBlock(USER_BEFORE, 'cfg', BLOCK)
    expect(removeBlock(added, 'cfg')).toBe(USER_BEFORE)
  })

  it('should refuse a config folder or binary path with a line break', () => {
    const evil = '/tmp/x\nHost *\n  ProxyCommand touch PWNED'
    expect(() => renderBlock({ binary: '/bin/cm', configDir: evil, workspaces: [] })).toThrow(
      /line break/,
    )
    expect(() => renderBlock({ binary: evil, workspaces: [] })).toThrow(/line break/)
  })

  it('should remove the block and nothing else', () => {
    expect(removeBlock(USER_BEFORE + OLD + USER_AFTER, 'cfg')).toBe(USER_BEFORE + USER_AFTER)
    expect(removeBlock(USER_BEFORE, 'cfg')).toBe(USER_BEFORE)
    expect(removeBlock(OLD, 'cfg')).toBe('')
  })
})

describe('config-ssh on a malformed file, through the CLI', () => {
  let user: CliUser
  beforeAll(async () => {
    user = await newCliUser()
  })
  afterAll(async () => {
    await rm(user.home, { recursive: true, force: true })
  })

  it('should refuse a FIFO or a device at once, and write through a dangling symlink', async () => {
    const fifo = join(user.home, 'fifo')
    await execa('mkfifo', [fifo])
    const r = await runCli(user.env, ['config-ssh', '-y', '--ssh-config-file', fifo], {
      timeout: 20_000,
    })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toMatch(/not a regular file.*MESH_BAD_ARGUMENT/)

    const dev = await runCli(user.env, [
      'config-ssh',
      '--dry-run',
      '--ssh-config-file',
      '/dev/null',
    ])
    expect(dev.exitCode).toBe(1)
    expect(dev.stderr).toMatch(/not a regular file/)

    // Logged out, a dangling link is still checked before the server is asked.
    const link = join(user.home, 'link')
    await symlink('dots/missing_config', link)
    const viaLink = await runCli(user.env, ['config-ssh', '-y', '--ssh-config-file', link])
    expect(viaLink.stderr).toMatch(/MESH_NOT_LOGGED_IN/)
    expect((await lstat(link)).isSymbolicLink()).toBe(true)
  })

  it('should exit non-zero with the line numbers and leave the file byte-identical', async () => {
    const file = join(user.home, 'ssh_config')
    const text = `${USER_BEFORE}${BLOCK_START}\nHost coder-mesh.*\n${USER_AFTER}${OLD}`
    await writeFile(file, text)
    const hash = createHash('sha256').update(text).digest('hex')

    const r = await runCli(user.env, ['config-ssh', '-y', '--ssh-config-file', file])
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(/2 start markers \(line 3, 7\), 1 end marker \(line 10\)/)
    expect(r.stderr).not.toMatch(/\n\s+at /) // no stack trace
    const after = await readFile(file)
    expect(createHash('sha256').update(after).digest('hex')).toBe(hash)
  })
})

describe('ProxyCommand quoting', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coder-mesh-quote-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('should keep plain words bare and quote the rest for sh, doubling %', () => {
    expect(proxyCommandWord('/usr/bin/coder-mesh')).toBe('/usr/bin/coder-mesh')
    expect(proxyCommandWord('/a b')).toBe(`'/a b'`)
    expect(proxyCommandWord(`it's`)).toBe(`'it'\\''s'`)
    expect(proxyCommandWord('/50%')).toBe('/50%%')
  })

  // Space, both quotes, backslash, %, $, a backtick and a non-ASCII letter.
  const strange = `dir with space/it's "q" \\ 100% $HOME \`x\` é`

  const shells = ['/bin/sh', '/bin/bash', '/bin/dash', '/bin/zsh'].filter((s) => existsSync(s))
  for (const shell of shells) {
    it(`should reach the CLI with every argument intact through ssh and ${shell}`, async () => {
      const binDir = join(dir, strange, 'bin')
      const cfgDir = join(dir, strange, 'config')
      await mkdir(binDir, { recursive: true })
      const argsFile = join(dir, `args-${shell.replace(/\//g, '_')}`)
      const binary = join(binDir, 'coder-mesh')
      // Stands where the CLI would: records the arguments OpenSSH ran it with.
      await writeFile(
        binary,
        `#!/bin/sh\nfor a in "$@"; do printf '%s\\0' "$a"; done > '${argsFile}'\n`,
      )
      await chmod(binary, 0o755)
      const config = join(dir, 'config')
      const block = renderBlock({ binary, configDir: cfgDir, workspaces: ['dev'] })
      await writeFile(config, Buffer.from(replaceBlock('', config, block), 'latin1'))

      const parsed = await execa('ssh', ['-F', config, '-G', 'coder-mesh.dev'], { reject: false })
      expect(parsed.exitCode).toBe(0)
      expect(parsed.stderr).toBe('')
      expect(parsed.stdout).toMatch(/^stricthostkeychecking false$/m)

      await execa('ssh', ['-F', config, 'coder-mesh.dev', 'true'], {
        reject: false,
        env: { SHELL: shell },
        timeout: 20_000,
      })
      const args = (await readFile(argsFile, 'utf8')).split('\0').slice(0, -1)
      expect(args).toEqual(['--global-config', cfgDir, 'ssh', '--stdio', 'coder-mesh.dev'])
    })
  }
})

describe("config-ssh's hint", () => {
  it('should name the file with -F unless it is the account’s own ~/.ssh/config', () => {
    expect(tryCommand('/home/ann/.ssh/config', '/home/ann')).toBe('ssh')
    expect(tryCommand('/home/ann/.ssh/../.ssh/config', '/home/ann')).toBe('ssh')
    expect(tryCommand('/tmp/cfg/ssh_config', '/home/ann')).toBe('ssh -F /tmp/cfg/ssh_config')
    // A HOME that is not the account's: OpenSSH still reads the account's.
    expect(tryCommand('/tmp/home/.ssh/config', '/home/ann')).toBe('ssh -F /tmp/home/.ssh/config')
  })
})
