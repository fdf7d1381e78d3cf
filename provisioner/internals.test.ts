import { describe, expect, it } from 'vitest'
import { LineSplitter, MAX_LINE } from './lines.ts'
import { createRedactor } from './redact.ts'
import { terraformEnv } from './terraform.ts'
import { checkFiles, templatePath } from './workdir.ts'

describe('templatePath', () => {
  it('normalizes harmless paths', () => {
    expect(templatePath('main.tf')).toBe('main.tf')
    expect(templatePath('./modules//vm/main.tf')).toBe('modules/vm/main.tf')
  })

  it.each(['../x.tf', 'a/../../x.tf', 'a/..', '/etc/passwd', 'C:/x.tf', 'a\\b', '', '.', 'a\0b'])(
    'refuses %j',
    (path) => {
      expect(() => templatePath(path)).toThrow(
        expect.objectContaining({ code: 'MESH_BAD_REQUEST' }),
      )
    },
  )
})

describe('checkFiles', () => {
  const file = (path: string) => ({ path, content: Buffer.from('') })

  it('refuses a path given twice', () => {
    expect(() => checkFiles([file('main.tf'), file('./main.tf')])).toThrow(/appears twice/)
  })

  it('refuses a file that is also a folder', () => {
    expect(() => checkFiles([file('a'), file('a/b.tf')])).toThrow(/folder/)
    expect(() => checkFiles([file('a/b.tf'), file('a')])).toThrow(/folder/)
  })

  it('leaves out the files of a local Terraform run', () => {
    const { files, ignored } = checkFiles([
      file('main.tf'),
      file('.terraform.lock.hcl'),
      file('terraform.tfstate'),
      file('terraform.tfstate.backup'),
      file('.terraform/providers/x'),
      file('errored.tfstate'),
      file('.coder-mesh/terraform.json'),
      file('modules/x/terraform.tfstate'),
    ])
    expect(files.map((f) => f.path)).toEqual([
      'main.tf',
      '.terraform.lock.hcl',
      'modules/x/terraform.tfstate',
    ])
    expect(ignored).toHaveLength(5)
  })
})

describe('createRedactor', () => {
  it('hides each secret, raw and quoted', () => {
    const { redact } = createRedactor(['s3"cr\\t', 'abc', ''])
    expect(redact('a s3"cr\\t b')).toBe('a [redacted] b')
    expect(redact('["echo" "s3\\"cr\\\\t"]')).toBe('["echo" "[redacted]"]')
    expect(redact('abcabc xyz')).toBe('[redacted][redacted] xyz')
    expect(redact('nothing here')).toBe('nothing here')
  })

  it('hides a longer secret whole when it contains a shorter one', () => {
    expect(createRedactor(['pass', 'password1']).redact('password1')).toBe('[redacted]')
  })

  it('moves a cut past a secret that straddles it', () => {
    const { safeCut } = createRedactor(['SECRET'])
    expect(safeCut('xxSECRETyy', 4)).toBe(8)
    expect(safeCut('xxSECRETyy', 2)).toBe(2)
    expect(safeCut('xxSECRETyy', 8)).toBe(8)
  })
})

describe('LineSplitter', () => {
  function split(chunks: (string | Buffer)[], cut?: (t: string, at: number) => number) {
    const lines: string[] = []
    const splitter = new LineSplitter((line) => lines.push(line), cut)
    for (const chunk of chunks) splitter.push(chunk)
    splitter.end()
    return lines
  }

  it('joins chunks into lines and passes on the unfinished last one', () => {
    expect(split(['ab', 'c\nde', 'f\r\n\n', 'tail'])).toEqual(['abc', 'def', '', 'tail'])
  })

  it('does not split a multi-byte character across chunks', () => {
    const bytes = Buffer.from('héllo\n')
    expect(split([bytes.subarray(0, 2), bytes.subarray(2)])).toEqual(['héllo'])
  })

  it('cuts an over-long line without splitting a secret', () => {
    const long = 'x'.repeat(MAX_LINE - 3) + 'SECRET' + 'y'.repeat(10)
    const { redact, safeCut } = createRedactor(['SECRET'])
    const lines = split([long], safeCut).map(redact)
    expect(lines).toHaveLength(2)
    expect(lines.join('')).toBe('x'.repeat(MAX_LINE - 3) + '[redacted]' + 'y'.repeat(10))
  })
})

describe('terraformEnv', () => {
  it('holds only what Terraform needs, and the variables', () => {
    process.env.SOME_SECRET_OF_OURS = 'x'
    try {
      const env = terraformEnv({ region: 'eu', n: '1' })
      expect(env).toMatchObject({
        TF_VAR_region: 'eu',
        TF_VAR_n: '1',
        TF_IN_AUTOMATION: '1',
        TF_INPUT: '0',
        CHECKPOINT_DISABLE: '1',
      })
      expect(env.PATH).toBe(process.env.PATH)
      expect(env.HOME).toBeDefined()
      expect(env.SOME_SECRET_OF_OURS).toBeUndefined()
    } finally {
      delete process.env.SOME_SECRET_OF_OURS
    }
  })
})
